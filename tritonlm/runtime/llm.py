"""The public API: ``LLM`` (blocking and streaming) and ``AsyncLLM`` (async iterators).

One background thread (:class:`~tritonlm.runtime.engine_loop.EngineLoop`) owns the
:class:`Engine` and loops schedule -> step; any thread may submit or abort. Submissions that
arrive while a step runs join the batch at the next step, so many threads calling
:meth:`LLM.generate` at once are served together. Besides generation the facade answers what
the edges (server, DSPy, providers) need: :attr:`LLM.max_model_len`, :meth:`LLM.tokenize`,
:meth:`LLM.metrics`, and :meth:`AsyncLLM.complete`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from tritonlm.config import ModelConfig
from tritonlm.errors import ConfigError, InferenceError
from tritonlm.runtime.config import EngineConfig, RequestLimits
from tritonlm.runtime.engine import Engine
from tritonlm.runtime.engine_loop import EngineLoop, Sink, TextStream, apply_thread_setting
from tritonlm.runtime.inputs import Prompt, split_prompts
from tritonlm.runtime.metrics import EngineHealth, EngineMetrics, EngineStats
from tritonlm.runtime.outputs import RequestOutput, StreamDelta
from tritonlm.runtime.sampling_params import SamplingParams
from tritonlm.threads import call_on_fresh_thread


class LLM:
    """Load a model and generate. ``generate`` batches its prompts; ``stream`` yields text deltas.

    Thread-safe: any number of threads may call ``generate`` / ``stream`` at once; one
    background loop serves them all in shared batches.
    """

    def __init__(
        self,
        model: str = "default",
        *,
        dtype: str = "auto",
        device: str = "cpu",
        backend: str | None = None,
        block_size: int = 16,
        kv_cache_bytes: int | None = None,
        kv_cache_fraction: float = 0.1,
        num_kv_blocks: int | None = None,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 512,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        deterministic: bool = False,
        quantization: str | None = "auto",
        limits: RequestLimits | None = None,
    ) -> None:
        """``deterministic``: greedy outputs of a request do not depend on the other requests
        sharing its batches (batch-invariant matmuls and attention; slower for batches).
        ``quantization``: see :func:`tritonlm.model.loader.load_model` (``"auto"``: a .gguf keeps
        its quantized weights, a HF folder loads dense). ``limits``: what one request may cost
        (:class:`~tritonlm.runtime.config.RequestLimits`: ``n``, generated tokens, grammar compile
        budgets, the grammar cache's bytes)."""
        model_config = ModelConfig(
            model=model,
            dtype=dtype,
            device=device,
            backend=backend,
            max_model_len=max_model_len,
            seed=seed,
            deterministic=deterministic,
            quantization=quantization,
        )
        engine_config = EngineConfig(
            block_size=block_size,
            kv_cache_bytes=kv_cache_bytes,
            kv_cache_fraction=kv_cache_fraction,
            num_kv_blocks=num_kv_blocks,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            limits=limits or RequestLimits(),
        )
        from tritonlm.model.loader import load_model

        apply_thread_setting()
        loaded = load_model(
            model_config.model,
            dtype=model_config.dtype,
            device=model_config.device,
            backend=backend,
            deterministic=model_config.deterministic,
            quantization=model_config.quantization,
        )
        self._setup(loaded.model, loaded.tokenizer, engine_config, getattr(loaded, "name", model))

    @classmethod
    def from_loaded(cls, loaded: Any, **engine_options: Any) -> LLM:
        """An LLM over an already loaded model: a ``LoadedModel`` or a ``(model, tokenizer)`` pair.
        ``engine_options`` are :class:`EngineConfig` fields."""
        if isinstance(loaded, tuple):
            model, tokenizer = loaded
            name = "model"
        else:
            model, tokenizer, name = loaded.model, loaded.tokenizer, getattr(loaded, "name", "model")
        self = cls.__new__(cls)
        apply_thread_setting()
        self._setup(model, tokenizer, EngineConfig(**engine_options), name)
        return self

    def _setup(self, model: Any, tokenizer: Any, config: EngineConfig, name: str) -> None:
        self.name = name
        # the KV cache is allocated (and zeroed) off this thread: see tritonlm.threads
        self.engine = call_on_fresh_thread(lambda: Engine(model, tokenizer, config))
        self.tokenizer = tokenizer
        self._loop = EngineLoop(self.engine)

    # ---- API -------------------------------------------------------------------------------
    def generate(
        self, prompts: Any, params: SamplingParams | Sequence[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Generate for every prompt (batched); one :class:`RequestOutput` per prompt, in order.

        A prompt that cannot be served (too long, bad tokens) gets an output whose completions
        have ``finish_reason='error'`` and ``error`` set; the others are unaffected.
        """
        prompt_list = split_prompts(prompts)
        if params is None or isinstance(params, SamplingParams):
            param_list = [params or SamplingParams()] * len(prompt_list)
        else:
            param_list = list(params)
            if len(param_list) != len(prompt_list):
                raise ConfigError(f"{len(param_list)} SamplingParams for {len(prompt_list)} prompts")
        results: queue.Queue[StreamDelta] = queue.Queue()

        def sink(delta: StreamDelta) -> None:
            if delta.finished:
                results.put(delta)

        ids = [self._loop.new_request_id() for _ in prompt_list]
        self._loop.submit_many(list(zip(prompt_list, param_list, [sink] * len(ids), ids, strict=True)))
        outputs: dict[str, RequestOutput] = {}
        try:
            while len(outputs) < len(ids):
                delta = results.get()
                assert delta.output is not None
                outputs[delta.request_id] = delta.output
        finally:
            for request_id in ids:
                if request_id not in outputs:
                    self._loop.abort(request_id)
        return [outputs[i] for i in ids]

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> TextStream:
        """Text deltas of one prompt as they are generated (see :class:`TextStream`)."""
        return TextStream(self._loop, prompt, params or SamplingParams())

    def submit(self, prompt: Prompt, params: SamplingParams, sink: Sink, request_id: str | None = None) -> str:
        """Low-level: queue a request whose deltas go to ``sink`` (called on the engine thread)."""
        return self._loop.submit(prompt, params, sink, request_id)

    def abort(self, request_id: str) -> None:
        """Abort a request; its blocks are freed and its output finishes with ``'abort'``."""
        self._loop.abort(request_id)

    @property
    def max_model_len(self) -> int:
        """Tokens one sequence may hold, prompt included."""
        return self.engine.max_model_len

    def tokenize(self, prompt: Prompt) -> list[int]:
        """The token ids the engine would run for ``prompt`` (text as is, chat messages through the
        chat template, token ids checked). Raises :class:`~tritonlm.errors.TokenizationError`."""
        return self.engine.inputs.tokenize(prompt)

    def metrics(self) -> EngineMetrics:
        """A snapshot of the engine's queues, KV cache and counters (any thread)."""
        return self.engine.metrics()

    def health(self) -> EngineHealth:
        """Whether the engine loop serves requests (failed, closed or stalled loops are not ok)."""
        return self._loop.health()

    @property
    def stats(self) -> EngineStats:
        return self.engine.stats

    def close(self) -> None:
        self._loop.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _LoopSink:
    """Hands deltas from the engine thread to an asyncio queue; drops them once the event loop
    has closed (its consumer is gone; the request is being aborted)."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[StreamDelta]

    def __call__(self, delta: StreamDelta) -> None:
        with contextlib.suppress(RuntimeError):  # "Event loop is closed"
            self.loop.call_soon_threadsafe(self.queue.put_nowait, delta)


class AsyncLLM:
    """``async for delta in AsyncLLM.generate(prompt, params)``: :class:`StreamDelta` s, the last
    with ``finished=True`` and the :class:`RequestOutput`. Cancelling the iteration aborts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.llm = LLM(*args, **kwargs)

    @classmethod
    def from_llm(cls, llm: LLM) -> AsyncLLM:
        self = cls.__new__(cls)
        self.llm = llm
        return self

    @classmethod
    def from_loaded(cls, loaded: Any, **engine_options: Any) -> AsyncLLM:
        return cls.from_llm(LLM.from_loaded(loaded, **engine_options))

    async def generate(
        self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None
    ) -> AsyncGenerator[StreamDelta, None]:
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[StreamDelta] = asyncio.Queue()
        request_id = self.llm.submit(prompt, params or SamplingParams(), _LoopSink(loop, deltas), request_id)
        finished = False
        try:
            while not finished:
                delta = await deltas.get()
                finished = delta.finished
                yield delta
        finally:
            if not finished:
                self.llm.abort(request_id)

    async def complete(
        self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None
    ) -> RequestOutput:
        """Generate to the end; the :class:`RequestOutput` of the finished delta. A failed request is
        returned, not raised (its ``error`` is set). Cancelling the await aborts the request."""
        output: RequestOutput | None = None
        async with contextlib.aclosing(self.generate(prompt, params, request_id)) as deltas:
            async for delta in deltas:
                if delta.finished:
                    output = delta.output
        if output is None:  # pragma: no cover - the loop always ends a request with an output
            raise InferenceError("the engine finished a request without an output")
        return output

    @property
    def max_model_len(self) -> int:
        return self.llm.max_model_len

    def tokenize(self, prompt: Prompt) -> list[int]:
        return self.llm.tokenize(prompt)

    def metrics(self) -> EngineMetrics:
        return self.llm.metrics()

    def health(self) -> EngineHealth:
        return self.llm.health()

    def abort(self, request_id: str) -> None:
        self.llm.abort(request_id)

    def close(self) -> None:
        self.llm.close()


__all__ = ["LLM", "AsyncLLM", "EngineLoop", "SamplingParams", "TextStream"]
