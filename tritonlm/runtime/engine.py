"""The engine: one step is schedule -> run the model -> grammar masks -> sample -> update.

Single-threaded by design; :class:`tritonlm.runtime.llm.LLM` drives it from one background
loop and takes submissions from any thread.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from tritonlm.errors import (
    ConfigError,
    ConstraintViolation,
    ContextTooLongError,
    InferenceError,
    TokenizationError,
    TritonLMError,
)
from tritonlm.model.qwen2 import Qwen2ForCausalLM
from tritonlm.runtime.block_manager import BlockManager
from tritonlm.runtime.model_runner import ModelRunner, num_kv_blocks
from tritonlm.runtime.outputs import CompletionOutput, RequestOutput, RequestUsage, StreamDelta
from tritonlm.runtime.request import Request, RequestStatus
from tritonlm.runtime.sampler import Sampler, SamplerOutput, TokenLogprob, draw_seed
from tritonlm.runtime.sampling_params import SamplingParams
from tritonlm.runtime.scheduler import Scheduler, SchedulerOutput

Prompt = str | Sequence[dict[str, Any]] | Sequence[int]

# A constrained output this many tokens from its budget starts closing: a sampled token whose
# shortest completion would no longer fit is replaced by the next token of the current one,
# and once the completion needs the whole budget it is appended with EOS.
CLOSING_WINDOW_TOKENS = 32


@dataclass(frozen=True)
class EngineConfig:
    """Engine sizing. The KV cache gets ``num_kv_blocks`` blocks if given, else
    ``kv_cache_bytes``, else ``kv_cache_fraction`` of the free memory (never more than
    ``max_num_seqs`` full-length sequences need)."""

    block_size: int = 16
    kv_cache_bytes: int | None = None
    kv_cache_fraction: float = 0.1
    num_kv_blocks: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        def positive(name: str, value: Any, *, optional: bool = False) -> None:
            if optional and value is None:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"EngineConfig.{name}={value!r}: must be a positive integer")

        positive("block_size", self.block_size)
        positive("kv_cache_bytes", self.kv_cache_bytes, optional=True)
        positive("num_kv_blocks", self.num_kv_blocks, optional=True)
        positive("max_num_seqs", self.max_num_seqs)
        positive("max_num_batched_tokens", self.max_num_batched_tokens)
        positive("max_model_len", self.max_model_len, optional=True)
        if not isinstance(self.kv_cache_fraction, (int, float)) or not 0 < self.kv_cache_fraction <= 0.95:
            raise ConfigError(f"EngineConfig.kv_cache_fraction={self.kv_cache_fraction!r}: must be in (0, 0.95]")
        if not isinstance(self.seed, int):
            raise ConfigError(f"EngineConfig.seed={self.seed!r}: must be an integer")


@dataclass
class _Completion:
    """Engine-side text state of one request (one of a group's ``n``)."""

    detokenizer: Any
    text: str = ""
    num_emitted_chars: int = 0
    num_emitted_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None


@dataclass
class _Group:
    """One user request: ``n`` sibling :class:`Request` s over one prompt."""

    group_id: str
    prompt: Any
    prompt_token_ids: list[int]
    params: SamplingParams
    requests: list[Request]
    completions: list[_Completion]
    arrival_time: float
    first_token_time: float | None = None
    finish_time: float | None = None


@dataclass
class _GrammarMasks:
    """Bitmasks of the constrained rows of one step (``rows`` index the sampling requests)."""

    rows: list[int]
    bitmask: Any  # numpy int32 [len(rows), ceil(V / 32)], or None
    errors: dict[int, BaseException]  # row -> the error filling its mask raised


@dataclass
class EngineStats:
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=100_000))  # requests per step
    batch_tokens: deque[int] = field(default_factory=lambda: deque(maxlen=100_000))  # tokens per step
    num_steps: int = 0
    num_closed_early: int = 0  # constrained outputs completed by the grammar to fit their budget


class Engine:
    def __init__(self, model: Qwen2ForCausalLM, tokenizer: Any, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        self.model = model
        self.tokenizer = tokenizer
        model_len = model.config.max_position_embeddings
        if config.max_model_len is not None:
            if config.max_model_len > model_len:
                raise ConfigError(f"max_model_len={config.max_model_len} exceeds the model's context of {model_len}")
            model_len = config.max_model_len
        bs = config.block_size
        if config.num_kv_blocks is not None:
            num_blocks = config.num_kv_blocks
        else:
            needed = config.max_num_seqs * -(-model_len // bs)
            num_blocks = num_kv_blocks(
                model,
                bs,
                kv_cache_bytes=config.kv_cache_bytes,
                kv_cache_fraction=config.kv_cache_fraction,
                max_blocks=needed,
            )
        if num_blocks < 1:
            raise ConfigError("the KV cache budget is smaller than one block")
        if config.max_model_len is None:
            model_len = min(model_len, num_blocks * bs)
        elif model_len > num_blocks * bs:
            raise ConfigError(
                f"max_model_len={model_len} does not fit the KV cache ({num_blocks} blocks of {bs} tokens)"
            )
        self.max_model_len = model_len
        self.block_manager = BlockManager(num_blocks, bs, enable_prefix_caching=config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.block_manager,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
        )
        self.runner = ModelRunner(model, self.block_manager)
        self.sampler = Sampler()
        self.stats = EngineStats()
        self._groups: dict[str, _Group] = {}
        self._ids = itertools.count()
        self._arrivals = itertools.count()
        self._rng = random.Random(config.seed)
        eos_ids = tuple(getattr(tokenizer, "eos_token_ids", ()) or model.config.eos_token_ids)
        self._eos_token_ids = frozenset(eos_ids)
        self._closing_eos = eos_ids[0] if eos_ids else -1  # the EOS that closes a constrained output
        self._pending: list[StreamDelta] = []  # deltas produced outside step() (aborts)
        self._mask_pool: ThreadPoolExecutor | None = None  # fills grammar masks during the forward

    # ---- submission ------------------------------------------------------------------------
    def tokenize_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: raw text (no template), chat messages (template applied), or ids."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        elif isinstance(prompt, Sequence) and prompt and all(isinstance(m, dict) for m in prompt):
            text = self.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        elif isinstance(prompt, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
            vocab = self.model.config.vocab_size
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise TokenizationError(f"prompt token ids {bad[:5]} outside the vocabulary [0, {vocab})")
        else:
            raise TokenizationError(
                f"a prompt is a str, a list of chat messages or a list of token ids; got {type(prompt).__name__}"
            )
        if not ids:
            raise TokenizationError("the prompt is empty")
        return ids

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None) -> str:
        """Queue a request; returns its id. Raises a :class:`TritonLMError` for a bad request
        (the engine state is unchanged then)."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ConfigError(f"params must be SamplingParams, got {type(params).__name__}")
        group_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if group_id in self._groups:
            raise ConfigError(f"request id {group_id!r} is already in use")
        prompt_ids = self.tokenize_prompt(prompt)
        if len(prompt_ids) >= self.max_model_len:
            raise ContextTooLongError(
                f"the prompt has {len(prompt_ids)} tokens; the context holds {self.max_model_len} "
                "(including at least one generated token)"
            )
        grammar = self._compile_grammar(params) if params.has_constraint else None
        max_total = min(len(prompt_ids) + params.max_tokens, self.max_model_len)
        arrival = next(self._arrivals)
        requests: list[Request] = []
        completions: list[_Completion] = []
        for index in range(params.n):
            seed = draw_seed(params.seed, index) if params.seed is not None else self._rng.getrandbits(63)
            request = Request(
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
            requests.append(request)
            completions.append(
                _Completion(
                    detokenizer=self._detokenizer(params),
                    logprobs=[] if params.logprobs is not None else None,
                )
            )
        group = _Group(group_id, prompt, prompt_ids, params, requests, completions, time.perf_counter())
        self._groups[group_id] = group
        for request in requests:
            self.scheduler.add(request)
        return group_id

    def _detokenizer(self, params: SamplingParams) -> Any:
        from tritonlm.model.tokenizer import IncrementalDetokenizer

        return IncrementalDetokenizer(self.tokenizer, skip_special_tokens=params.skip_special_tokens)

    def _compile_grammar(self, params: SamplingParams) -> Any:
        """The request's grammar (``tritonlm.constraints`` caches compiled grammars itself)."""
        try:
            from tritonlm.constraints import compile_choice, compile_json_schema, compile_regex
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError("constrained decoding needs tritonlm.constraints, which is not available") from exc
        if params.json_schema is not None:
            return compile_json_schema(params.json_schema, self.tokenizer)
        if params.regex is not None:
            return compile_regex(params.regex, self.tokenizer)
        assert params.choice is not None
        return compile_choice(list(params.choice), self.tokenizer)

    def abort(self, request_id: str) -> bool:
        """Abort a request (all its completions); frees its blocks. False if it is unknown or done."""
        group = self._groups.get(request_id)
        if group is None:
            return False
        for request in group.requests:
            if not request.is_finished:
                self.scheduler.finish(request, "abort")
        self._pending.extend(self._finish_group_if_done(group))
        return True

    def abort_all(self) -> None:
        """Abort every request and drop undelivered deltas (after an engine failure)."""
        for group_id in list(self._groups):
            self.abort(group_id)
        self._pending.clear()

    @property
    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished or bool(self._pending)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._groups)

    # ---- the step ----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StreamDelta]:
        """Advance every scheduled request by one model step; returns the new deltas."""
        deltas, self._pending = self._pending, []
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return deltas
        self._record(batch)
        # requests whose last scheduled token completes them sample this step; their grammar
        # masks are filled on another thread while the model runs (torch releases the GIL)
        sampling = [
            r
            for r in batch.requests.values()
            if r.num_computed_tokens + batch.num_scheduled_tokens[r.request_id] == r.num_tokens
        ]
        masks = self._start_grammar_masks(sampling)
        logits = self._run_model(batch, deltas)
        if logits is None:
            if masks is not None:
                masks.result()
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

    def _start_grammar_masks(self, sampling: list[Request]) -> Future[_GrammarMasks] | None:
        """Start filling the bitmasks of the constrained rows of ``sampling`` in the background."""
        rows = [i for i, r in enumerate(sampling) if r.matcher is not None]
        if not rows:
            return None
        if self._mask_pool is None:
            self._mask_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tritonlm-masks")
        matchers = [sampling[i].matcher for i in rows]
        vocab_size = self.model.config.vocab_size

        def fill() -> _GrammarMasks:
            from tritonlm.constraints import allocate_token_bitmask

            bitmask = allocate_token_bitmask(len(rows), vocab_size)
            errors: dict[int, BaseException] = {}
            for j, matcher in enumerate(matchers):
                try:
                    matcher.fill_next_token_bitmask(bitmask, j)
                except Exception as exc:  # fails that request alone
                    errors[rows[j]] = exc
            return _GrammarMasks(rows, bitmask, errors)

        return self._mask_pool.submit(fill)

    def _apply_grammar_masks(
        self,
        logits: torch.Tensor,
        sampling: list[Request],
        masks: Future[_GrammarMasks] | None,
        deltas: list[StreamDelta],
    ) -> list[bool]:
        """Mask the logits of constrained rows in place; returns which rows are still live."""
        live = [True] * len(sampling)
        if masks is None:
            return live
        try:
            result = masks.result()
        except Exception as exc:  # the mask thread itself failed: fail the constrained rows
            result = _GrammarMasks([], None, {i: exc for i, r in enumerate(sampling) if r.matcher is not None})
        for i, exc in result.errors.items():
            live[i] = False
            self._fail(sampling[i], exc, deltas)
        if result.bitmask is None:
            return live
        rows = result.rows
        try:
            sub = logits[rows]
            self.model.ops.apply_token_bitmask(sub, torch.from_numpy(result.bitmask).to(logits.device))
            logits[rows] = sub
        except Exception as exc:
            for i in rows:
                if live[i]:
                    live[i] = False
                    self._fail(sampling[i], exc, deltas)
        return live

    def _sample(
        self, logits: torch.Tensor, sampling: list[Request], live: list[bool], deltas: list[StreamDelta]
    ) -> SamplerOutput:
        try:
            return self.sampler(logits, sampling)
        except Exception:
            # isolate the bad row: sample each request alone
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
        now = time.perf_counter()
        for i, request in enumerate(sampling):
            if not live[i] or request.is_finished:
                continue
            try:
                token, logprob = sampled.token_ids[i], sampled.logprobs[i]
                closes = self._closes_within_budget(request)
                if closes:
                    token = self._fit_token_to_budget(request, token)
                    logprob = None
                self._append_token(request, token, logprob, now, deltas)
                if request.matcher is not None and not request.is_finished and request.params.logprobs is None:
                    self._jump_forward(request, now, deltas)
                if closes and not request.is_finished:
                    self._close_if_due(request, now, deltas)
            except Exception as exc:
                self._fail(request, exc, deltas)

    # ---- closing constrained outputs within max_tokens --------------------------------------------
    # Only outputs without logprobs (forced tokens have none) that stop at EOS take part.
    def _closes_within_budget(self, request: Request) -> bool:
        params = request.params
        return (
            request.matcher is not None
            and params.logprobs is None
            and not params.ignore_eos
            and self._remaining_tokens(request) <= CLOSING_WINDOW_TOKENS
        )

    @staticmethod
    def _remaining_tokens(request: Request) -> int:
        """Tokens the request may still append, EOS included."""
        return min(request.params.max_tokens - request.num_output_tokens, request.max_total_tokens - request.num_tokens)

    def _fit_token_to_budget(self, request: Request, token: int) -> int:
        """``token``, or the next token of the current completion if the output could no longer
        be completed (with EOS) within the budget after ``token``. The matcher is left as it was."""
        matcher = request.matcher
        current = matcher.find_completion_tokens()
        if current is None or token in self._eos_token_ids:
            return token
        if not matcher.accept_token(token):
            return token  # not allowed at all: _append_token reports it
        after = matcher.find_completion_tokens()
        matcher.rollback(1)
        if after is not None and len(after) + 1 <= self._remaining_tokens(request) - 1:
            return token
        return current[0] if current else self._closing_eos

    def _close_if_due(self, request: Request, now: float, deltas: list[StreamDelta]) -> None:
        """Append the completion and EOS once they need the whole remaining budget."""
        completion = request.matcher.find_completion_tokens()
        if completion is None or len(completion) + 1 < self._remaining_tokens(request):
            return
        self.stats.num_closed_early += 1
        for token in [*completion, self._closing_eos]:
            self._append_token(request, token, None, now, deltas)
            if request.is_finished:
                return

    def _jump_forward(self, request: Request, now: float, deltas: list[StreamDelta]) -> None:
        """Append the tokens the grammar forces next without sampling them (jump-forward).

        They join ``token_ids`` uncomputed, so the next step runs them through the model in one
        chunk (the prefill path) before sampling again, instead of one decode step each.
        """
        for token in request.matcher.find_forced_tokens():
            self._append_token(request, token, None, now, deltas)
            if request.is_finished:
                return

    def _append_token(
        self, request: Request, token: int, logprob: TokenLogprob | None, now: float, deltas: list[StreamDelta]
    ) -> None:
        """Append one sampled token; check stop conditions; emit the text delta. Mutates ``request``."""
        group = self._groups[request.group_id]
        completion = group.completions[request.index]
        params = request.params
        if group.first_token_time is None:
            group.first_token_time = now
        request.token_ids.append(token)
        if completion.logprobs is not None and logprob is not None:
            completion.logprobs.append(logprob)
        if request.matcher is not None and not request.matcher.accept_token(token):
            raise ConstraintViolation(f"token {token} is not allowed by the request's grammar")

        finish_reason: str | None = None
        cut_at_stop_string = False
        is_stop_token = token in params.stop_token_ids or (not params.ignore_eos and token in self._eos_token_ids)
        if is_stop_token:
            finish_reason = "stop"
        else:
            previous_len = len(completion.text)
            completion.text += completion.detokenizer.push(token)
            if params.stop:
                longest = max(len(s) for s in params.stop)
                start = max(0, previous_len - longest + 1)
                hits = [pos for s in params.stop if (pos := completion.text.find(s, start)) >= 0]
                if hits:
                    completion.text = completion.text[: min(hits)]
                    finish_reason = "stop"
                    cut_at_stop_string = True
        if finish_reason is None and request.matcher is not None and request.matcher.is_terminated():
            finish_reason = "stop"
        if finish_reason is None and (
            request.num_output_tokens >= params.max_tokens or request.num_tokens >= request.max_total_tokens
        ):
            finish_reason = "length"

        if finish_reason is not None:
            if not cut_at_stop_string:
                completion.text += completion.detokenizer.flush()
            self.scheduler.finish(request, finish_reason)
            visible = len(completion.text)
        else:
            hold = max((len(s) for s in params.stop), default=1) - 1  # a stop string may be forming
            visible = max(completion.num_emitted_chars, len(completion.text) - hold)
        delta_text = completion.text[completion.num_emitted_chars : visible]
        new_tokens = request.token_ids[request.num_prompt_tokens + completion.num_emitted_tokens :]
        completion.num_emitted_chars = visible
        completion.num_emitted_tokens = request.num_output_tokens
        if delta_text or new_tokens:
            deltas.append(StreamDelta(group.group_id, request.index, delta_text, new_tokens))
        deltas.extend(self._finish_group_if_done(group))

    def _fail(self, request: Request, error: BaseException, deltas: list[StreamDelta]) -> None:
        if not isinstance(error, TritonLMError):
            wrapped = InferenceError(f"request {request.request_id} failed: {error!r}")
            wrapped.__cause__ = error
            error = wrapped
        request.error = error
        self.scheduler.finish(request, "error")
        group = self._groups.get(request.group_id)
        if group is not None:
            deltas.extend(self._finish_group_if_done(group))

    def _finish_group_if_done(self, group: _Group) -> list[StreamDelta]:
        if group.group_id not in self._groups or not all(r.is_finished for r in group.requests):
            return []
        group.finish_time = time.perf_counter()
        del self._groups[group.group_id]
        output = self._request_output(group)
        deltas = []
        for request, completion in zip(group.requests, group.completions, strict=True):
            tail = completion.text[completion.num_emitted_chars :]
            completion.num_emitted_chars = len(completion.text)
            if tail and request.index != 0:
                deltas.append(StreamDelta(group.group_id, request.index, tail))
            elif request.index == 0:
                deltas.append(StreamDelta(group.group_id, 0, tail, [], finished=True, output=output))
        # the finished delta goes last
        deltas.sort(key=lambda d: d.finished)
        return deltas

    def _request_output(self, group: _Group) -> RequestOutput:
        outputs = [
            CompletionOutput(
                index=r.index,
                text=c.text,
                token_ids=r.output_token_ids,
                finish_reason=r.finish_reason,  # type: ignore[arg-type]
                logprobs=c.logprobs,
                error=r.error,
            )
            for r, c in zip(group.requests, group.completions, strict=True)
        ]
        end = group.finish_time or time.perf_counter()
        completion_tokens = sum(len(o.token_ids) for o in outputs)
        ttft = None if group.first_token_time is None else group.first_token_time - group.arrival_time
        decode_rate = None
        if group.first_token_time is not None and end > group.first_token_time and completion_tokens > len(outputs):
            decode_rate = (completion_tokens - len(outputs)) / (end - group.first_token_time)
        usage = RequestUsage(
            prompt_tokens=len(group.prompt_token_ids),
            completion_tokens=completion_tokens,
            cached_prompt_tokens=group.requests[0].num_cached_tokens,
            time_to_first_token_s=ttft,
            total_time_s=end - group.arrival_time,
            decode_tokens_per_s=decode_rate,
        )
        return RequestOutput(group.group_id, group.prompt, list(group.prompt_token_ids), outputs, usage)

    # ---- convenience (single-threaded use) --------------------------------------------------------
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


def failed_output(request_id: str, prompt: Any, error: BaseException, n: int = 1) -> RequestOutput:
    """The output of a request rejected before it reached the scheduler."""
    outputs = [CompletionOutput(i, "", [], "error", None, error) for i in range(n)]
    usage = RequestUsage(0, 0, 0, None, 0.0, None)
    return RequestOutput(request_id, prompt, [], outputs, usage)


__all__ = ["Engine", "EngineConfig", "EngineStats", "Prompt", "RequestStatus", "failed_output"]
