"""The engine: one step is schedule -> run the model -> fill grammar masks -> sample -> update.

Single-threaded by design; :class:`tritonlm.runtime.llm.LLM` drives it from one background
loop and takes submissions from any thread. The engine wires the parts and owns the flow:

* :class:`~tritonlm.runtime.scheduler.Scheduler` decides ``{request_id: num_tokens}`` per step
  and who samples (:meth:`~tritonlm.runtime.scheduler.SchedulerOutput.sampling_requests`);
* :class:`~tritonlm.runtime.model_runner.ModelRunner` owns the KV cache and every tensor;
* :class:`~tritonlm.runtime.structured_output.StructuredOutputManager` compiles grammars, masks
  logits, jumps forward and closes constrained outputs within their budget;
* :class:`~tritonlm.runtime.output_processor.OutputProcessor` turns tokens into text, stop
  decisions, deltas and outputs.

A failure confined to one request (its grammar, its sampling row, its text) fails that request
alone; a failed forward fails the requests of its batch; the engine goes on either way.

Submission is two halves: :meth:`Engine.prepare` (checks, tokenization, grammar compile; any
thread, touches no engine state, so the loop runs it on workers) and :meth:`Engine.add_prepared`
(the loop thread). :meth:`Engine.add_request` does both, for single-threaded use.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tritonlm.errors import (
    CompileCancelled,
    ConfigError,
    ConstraintViolation,
    InferenceError,
    RequestTooLargeError,
    TritonLMError,
)
from tritonlm.model.qwen2 import Qwen2ForCausalLM
from tritonlm.model.tokenizer import Tokenizer
from tritonlm.runtime.block_manager import BlockManager
from tritonlm.runtime.config import EngineConfig
from tritonlm.runtime.inputs import InputProcessor, Prompt
from tritonlm.runtime.metrics import EngineMetrics, EngineStats
from tritonlm.runtime.model_runner import ModelRunner, size_kv_cache
from tritonlm.runtime.output_processor import OutputProcessor, RequestGroup, failed_output
from tritonlm.runtime.outputs import RequestOutput, StreamDelta, TokenLogprob
from tritonlm.runtime.request import Request, RequestStatus
from tritonlm.runtime.sampler import Sampler, SamplerOutput, draw_seed
from tritonlm.runtime.sampling_params import SamplingParams
from tritonlm.runtime.scheduler import Scheduler, SchedulerOutput
from tritonlm.runtime.structured_output import CompiledGrammar, GrammarMasksJob, StructuredOutputManager


@dataclass(frozen=True)
class PreparedRequest:
    """A request checked, tokenized and with its grammar compiled, ready for the scheduler."""

    prompt: Prompt
    prompt_ids: list[int]
    params: SamplingParams
    grammar: CompiledGrammar | None


class Engine:
    def __init__(self, model: Qwen2ForCausalLM, tokenizer: Tokenizer, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        self.model = model
        self.tokenizer = tokenizer
        plan = size_kv_cache(model, config)
        self.max_model_len = plan.max_model_len
        self.block_manager = BlockManager(
            plan.num_blocks, config.block_size, enable_prefix_caching=config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.block_manager,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
        )
        self.runner = ModelRunner(model, self.block_manager)
        self.sampler = Sampler()
        self.stats = EngineStats()
        eos_token_ids = tuple(tokenizer.eos_token_ids or model.config.eos_token_ids)
        self.inputs = InputProcessor(tokenizer, model.config.vocab_size)
        self.structured_output = StructuredOutputManager(
            tokenizer, model.config.vocab_size, eos_token_ids, config.limits
        )
        self.outputs = OutputProcessor(tokenizer, eos_token_ids)
        self._ids = itertools.count()
        self._arrivals = itertools.count()
        self._rng = random.Random(config.seed)
        self._pending: list[StreamDelta] = []  # deltas produced outside step() (aborts)

    # ---- submission ------------------------------------------------------------------------
    def tokenize_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: raw text (no template), chat messages (template applied), or ids."""
        return self.inputs.tokenize(prompt)

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None) -> str:
        """Queue a request (``params.n`` sequences); returns its id. Raises a :class:`TritonLMError`
        for a bad request (the engine state is unchanged then)."""
        return self.add_prepared(self.prepare(prompt, params), request_id)

    def prepare(
        self, prompt: Prompt, params: SamplingParams | None = None, cancelled: Callable[[], bool] | None = None
    ) -> PreparedRequest:
        """Check the request against the engine's limits, tokenize it and compile its grammar.
        Any thread (reads no engine state). Raises a :class:`TritonLMError` for a bad request;
        :class:`~tritonlm.errors.CompileCancelled` once ``cancelled()`` is true."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ConfigError(f"params must be SamplingParams, got {type(params).__name__}")
        self._check_limits(params)
        prompt_ids = self.inputs.tokenize(prompt, max_prompt_tokens=self.max_model_len - 1)
        if cancelled is not None and cancelled():
            raise CompileCancelled("the request was aborted before its grammar was compiled")
        grammar = self.structured_output.compile(params, cancelled)
        return PreparedRequest(prompt, prompt_ids, params, grammar)

    def _check_limits(self, params: SamplingParams) -> None:
        limits = self.config.limits
        if params.n > limits.max_n:
            raise RequestTooLargeError(f"n={params.n}: this server allows at most n={limits.max_n} per request")
        if params.n * params.max_tokens > limits.max_request_tokens:
            raise RequestTooLargeError(
                f"n * max_tokens = {params.n} * {params.max_tokens} = {params.n * params.max_tokens}: this server "
                f"allows at most {limits.max_request_tokens} generated tokens per request"
            )

    def add_prepared(self, prepared: PreparedRequest, request_id: str | None = None) -> str:
        """Queue a prepared request; returns its id. Loop thread only."""
        group_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if group_id in self.outputs.groups:
            raise ConfigError(f"request id {group_id!r} is already in use")
        requests = self._fan_out(group_id, prepared.prompt_ids, prepared.params, prepared.grammar)
        self.outputs.add_group(prepared.prompt, prepared.prompt_ids, requests)
        for request in requests:
            self.scheduler.add(request)
        return group_id

    def _fan_out(
        self, group_id: str, prompt_ids: list[int], params: SamplingParams, grammar: CompiledGrammar | None
    ) -> list[Request]:
        """The ``n`` sibling requests of one user request; the later ones reuse the first's prefill."""
        max_total = min(len(prompt_ids) + params.max_tokens, self.max_model_len)
        arrival = next(self._arrivals)
        requests: list[Request] = []
        for index in range(params.n):
            seed = draw_seed(params.seed, index) if params.seed is not None else self._rng.getrandbits(63)
            requests.append(
                Request(
                    request_id=group_id if index == 0 else f"{group_id}#{index}",
                    group_id=group_id,
                    index=index,
                    token_ids=list(prompt_ids),
                    num_prompt_tokens=len(prompt_ids),
                    params=params,
                    sampling_seed=seed,
                    arrival_order=arrival,
                    max_total_tokens=max_total,
                    waits_for=requests[0] if index > 0 and self.config.enable_prefix_caching else None,
                    matcher=grammar.matcher() if grammar is not None else None,
                )
            )
        return requests

    def abort(self, request_id: str) -> bool:
        """Abort a request (all its completions); frees its blocks. False if it is unknown or done."""
        group = self.outputs.groups.get(request_id)
        if group is None:
            return False
        for request in group.requests:
            if not request.is_finished:
                self.scheduler.finish(request, "abort")
        self._pending.extend(self.outputs.finish_group_if_done(request_id))
        return True

    def abort_all(self) -> None:
        """Abort every request and drop undelivered deltas (after an engine failure)."""
        for group_id in list(self.outputs.groups):
            self.abort(group_id)
        self._pending.clear()

    @property
    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished or bool(self._pending)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.outputs.groups)

    @property
    def _groups(self) -> dict[str, RequestGroup]:
        """The unfinished user requests by id (owned by the output processor)."""
        return self.outputs.groups

    # ---- the step ----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StreamDelta]:
        """Advance every scheduled request by one model step; returns the new deltas."""
        deltas, self._pending = self._pending, []
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return deltas
        self._record(batch)
        sampling = batch.sampling_requests()
        # the grammar masks are filled on a worker while the model runs (torch releases the GIL)
        masks = self.structured_output.start_masks(sampling)
        logits = self._run_model(batch, deltas)
        if logits is None:
            self.structured_output.wait(masks)
            return deltas
        live = self._apply_grammar_masks(logits, sampling, masks, deltas)
        sampled = self._sample(logits, sampling, live, deltas)
        self._update(sampling, live, sampled, deltas)
        return deltas

    def _record(self, batch: SchedulerOutput) -> None:
        self.stats.num_steps += 1
        self.stats.batch_sizes.append(len(batch.num_scheduled_tokens))
        self.stats.batch_tokens.append(batch.total_tokens)

    def _run_model(self, batch: SchedulerOutput, deltas: list[StreamDelta]) -> torch.Tensor | None:
        """One forward for the batch; marks the tokens computed. Returns the logits of the
        sampling requests (batch order), or None if the forward failed (its requests fail)."""
        try:
            logits = self.runner.execute(batch)
        except Exception as exc:  # one forward serves the whole batch: fail what it held
            error = InferenceError(f"the model forward failed: {exc!r}")
            error.__cause__ = exc
            for request in list(batch.requests.values()):
                self._fail(request, error, deltas)
            return None
        self.scheduler.mark_computed(batch)
        return logits

    def _apply_grammar_masks(
        self, logits: torch.Tensor, sampling: list[Request], masks: GrammarMasksJob | None, deltas: list[StreamDelta]
    ) -> list[bool]:
        """Mask the logits of constrained rows in place; returns which rows are still live."""
        live = [True] * len(sampling)
        for i, error in self.structured_output.apply_masks(masks, logits, sampling, self.runner).items():
            live[i] = False
            self._fail(sampling[i], error, deltas)
        return live

    def _sample(
        self, logits: torch.Tensor, sampling: list[Request], live: list[bool], deltas: list[StreamDelta]
    ) -> SamplerOutput:
        try:
            return self.sampler(logits, sampling)
        except Exception:
            return self._sample_each(logits, sampling, live, deltas)

    def _sample_each(
        self, logits: torch.Tensor, sampling: list[Request], live: list[bool], deltas: list[StreamDelta]
    ) -> SamplerOutput:
        """Sample row by row, so a row the sampler fails on fails its request alone."""
        tokens: list[int] = []
        logprobs: list[TokenLogprob | None] = []
        for i, request in enumerate(sampling):
            try:
                out = self.sampler(logits[i : i + 1], [request])
                tokens.append(out.token_ids[0])
                logprobs.append(out.logprobs[0])
            except Exception as exc:
                live[i] = False
                self._fail(request, exc, deltas)
                tokens.append(-1)
                logprobs.append(None)
        return SamplerOutput(tokens, logprobs)

    def _update(
        self, sampling: list[Request], live: list[bool], sampled: SamplerOutput, deltas: list[StreamDelta]
    ) -> None:
        """Append each live row's token, then what its grammar forces or its budget requires."""
        now = time.perf_counter()
        structured = self.structured_output
        for i, request in enumerate(sampling):
            if not live[i] or request.is_finished:
                continue
            try:
                token, logprob = sampled.token_ids[i], sampled.logprobs[i]
                closes = structured.closes_within_budget(request)
                if closes:
                    token, logprob = structured.fit_token_to_budget(request, token), None
                self._append_tokens(request, [token], logprob, now, deltas)
                if not request.is_finished:
                    self._append_tokens(request, structured.forced_tokens(request), None, now, deltas)
                if closes and not request.is_finished:
                    closing = structured.closing_tokens(request)
                    self.stats.num_closed_early += bool(closing)
                    self._append_tokens(request, closing, None, now, deltas)
            except Exception as exc:
                self._fail(request, exc, deltas)

    def _append_tokens(
        self,
        request: Request,
        tokens: list[int],
        logprob: TokenLogprob | None,
        now: float,
        deltas: list[StreamDelta],
    ) -> None:
        """Append ``tokens`` one by one until the request finishes; ``logprob`` is the first's.
        Mutates ``request``; emits the text deltas."""
        for token in tokens:
            if request.is_finished:
                return
            request.token_ids.append(token)
            matcher = request.matcher
            if matcher is not None and not matcher.accept_token(token):
                raise ConstraintViolation(f"token {token} is not allowed by the request's grammar")
            terminated = matcher is not None and matcher.is_terminated()
            reason = self.outputs.process_token(request, token, logprob, now, grammar_terminated=terminated)
            if reason is not None:
                self.scheduler.finish(request, reason)
            deltas.extend(self.outputs.emit(request))
            logprob = None

    def _fail(self, request: Request, error: BaseException, deltas: list[StreamDelta]) -> None:
        if not isinstance(error, TritonLMError):
            wrapped = InferenceError(f"request {request.request_id} failed: {error!r}")
            wrapped.__cause__ = error
            error = wrapped
        request.error = error
        self.scheduler.finish(request, "error")
        deltas.extend(self.outputs.finish_group_if_done(request.group_id))

    # ---- monitoring and single-threaded use -----------------------------------------------------
    def metrics(self) -> EngineMetrics:
        bm, sched = self.block_manager, self.scheduler
        return EngineMetrics(
            num_requests_running=len(sched.running),
            num_requests_waiting=len(sched.waiting),
            last_batch_size=self.stats.batch_sizes[-1] if self.stats.batch_sizes else 0,
            num_steps=self.stats.num_steps,
            num_preemptions=sched.num_preemptions,
            num_closed_early=self.stats.num_closed_early,
            num_kv_blocks=bm.num_blocks,
            num_kv_blocks_used=bm.num_blocks - bm.num_free_blocks,
            num_prefix_cache_hit_blocks=bm.num_cache_hit_blocks,
            max_model_len=self.max_model_len,
        )

    def run_until_done(self) -> dict[str, RequestOutput]:
        """Step until no request is left; returns the outputs of the requests that finished."""
        done: dict[str, RequestOutput] = {}
        while self.has_unfinished_requests:
            for delta in self.step():
                if delta.finished and delta.output is not None:
                    done[delta.request_id] = delta.output
        return done

    def check_block_accounting(self) -> None:
        """AssertionError unless every block is free or cached with no references (idle engine)."""
        bm = self.block_manager
        bm.check_invariants()
        assert not self.scheduler.has_unfinished, "requests are still queued or running"
        assert all(b.ref_count == 0 for b in bm.blocks), "a block is still referenced"
        assert bm.num_free_blocks == bm.num_blocks, "a block is neither free nor cached"


__all__ = ["Engine", "EngineConfig", "EngineStats", "PreparedRequest", "Prompt", "RequestStatus", "failed_output"]
