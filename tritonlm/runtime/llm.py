"""The public API: ``LLM`` (blocking and streaming) and ``AsyncLLM`` (async iterators).

One background thread owns the :class:`Engine` and loops schedule -> step; any thread may
submit or abort. Submissions that arrive while a step runs join the batch at the next step,
so many threads calling :meth:`LLM.generate` at once are served together.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tritonlm.config import ModelConfig, env
from tritonlm.errors import ConfigError, InferenceError, TritonLMError
from tritonlm.runtime.engine import Engine, EngineConfig, Prompt, failed_output
from tritonlm.runtime.outputs import RequestOutput, StreamDelta
from tritonlm.runtime.sampling_params import SamplingParams
from tritonlm.threads import call_on_fresh_thread

Sink = Callable[[StreamDelta], None]

_TORCH_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class _Submission:
    request_id: str
    prompt: Prompt
    params: SamplingParams
    sink: Sink


class EngineLoop:
    """Runs one :class:`Engine` on a daemon thread; ``submit`` and ``abort`` are thread-safe.

    Every delta of a request goes to the sink given at submission, called on the loop
    thread; the last one has ``finished=True`` and carries the :class:`RequestOutput`.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cond = threading.Condition()
        self._submissions: list[_Submission] = []
        self._aborts: list[str] = []
        self._sinks: dict[str, Sink] = {}
        self._ids = itertools.count()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.loop_error: BaseException | None = None

    def new_request_id(self) -> str:
        return f"r{next(self._ids)}"

    def submit(self, prompt: Prompt, params: SamplingParams, sink: Sink, request_id: str | None = None) -> str:
        request_id = request_id if request_id is not None else self.new_request_id()
        with self._cond:
            if self._closed:
                raise InferenceError("the engine is closed")
            self._submissions.append(_Submission(request_id, prompt, params, sink))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tritonlm-engine", daemon=True)
                self._thread.start()
            self._cond.notify()
        return request_id

    def abort(self, request_id: str) -> None:
        with self._cond:
            self._aborts.append(request_id)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        _apply_thread_setting()  # torch's thread count is per thread (an OpenMP setting)
        engine = self.engine
        while True:
            with self._cond:
                while not (self._submissions or self._aborts or self._closed or engine.has_unfinished_requests):
                    self._cond.wait()
                if self._closed:
                    break
                submissions, self._submissions = self._submissions, []
                aborts, self._aborts = self._aborts, []
            for sub in submissions:
                self._admit(sub)
            for request_id in aborts:
                engine.abort(request_id)
            try:
                deltas = engine.step()
            except Exception as exc:  # a bug in the engine itself: fail everything in flight
                self.loop_error = exc
                deltas = []
                for request_id in list(self._sinks):
                    error = InferenceError(f"the engine loop failed: {exc!r}")
                    error.__cause__ = exc
                    self._sinks.pop(request_id)(
                        StreamDelta(request_id, 0, "", finished=True, output=failed_output(request_id, None, error))
                    )
                engine.abort_all()
            for delta in deltas:
                sink = self._sinks.get(delta.request_id)
                if sink is None:
                    continue
                if delta.finished:
                    del self._sinks[delta.request_id]
                sink(delta)
        # closed: abort what is left
        for request_id, sink in list(self._sinks.items()):
            sink(
                StreamDelta(
                    request_id,
                    0,
                    "",
                    finished=True,
                    output=failed_output(request_id, None, InferenceError("the engine was closed")),
                )
            )
        self._sinks.clear()

    def _admit(self, sub: _Submission) -> None:
        def reject(error: BaseException) -> None:
            output = failed_output(sub.request_id, sub.prompt, error, getattr(sub.params, "n", 1))
            sub.sink(StreamDelta(sub.request_id, 0, "", finished=True, output=output))

        if sub.request_id in self._sinks:
            reject(ConfigError(f"request id {sub.request_id!r} is already in use"))
            return
        try:
            self.engine.add_request(sub.prompt, sub.params, sub.request_id)
        except TritonLMError as exc:
            reject(exc)
            return
        except Exception as exc:
            error = InferenceError(f"request {sub.request_id} could not be added: {exc!r}")
            error.__cause__ = exc
            reject(error)
            return
        self._sinks[sub.request_id] = sub.sink


class TextStream:
    """Iterates the text deltas of completion 0 of one request; afterwards ``output`` holds the
    :class:`RequestOutput` (usage: token counts, time to first token, tokens/s). A failed request
    raises its error from the iteration. Closing the stream early aborts the request."""

    def __init__(self, loop: EngineLoop, prompt: Prompt, params: SamplingParams) -> None:
        self._loop = loop
        self._queue: queue.Queue[StreamDelta] = queue.Queue()
        self.output: RequestOutput | None = None
        self.request_id = loop.submit(prompt, params, self._queue.put)
        self._iter = self._deltas()

    def _deltas(self) -> Iterator[str]:
        try:
            while True:
                delta = self._queue.get()
                if delta.index == 0 and delta.text:
                    yield delta.text
                if delta.finished:
                    self.output = delta.output
                    break
        finally:
            if self.output is None:
                self._loop.abort(self.request_id)
        if self.output is not None and self.output.error is not None:
            raise self.output.error

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._iter)

    def close(self) -> None:
        self._iter.close()


def _split_prompts(prompts: Any) -> list[Prompt]:
    """One prompt (text, chat messages, token ids) or a list of them -> a list of prompts."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Sequence):
        if prompts and all(isinstance(m, dict) for m in prompts):
            return [prompts]
        if prompts and all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
            return [prompts]
        return list(prompts)
    raise ConfigError(f"prompts: expected a prompt or a list of prompts, got {type(prompts).__name__}")


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
    ) -> None:
        """``deterministic``: greedy outputs of a request do not depend on the other requests
        sharing its batches (batch-invariant matmuls and attention; slower for batches).
        ``quantization``: see :func:`tritonlm.model.loader.load_model` (``"auto"``: a .gguf keeps
        its quantized weights, a HF folder loads dense)."""
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
        )
        from tritonlm.model.loader import load_model

        _apply_thread_setting()
        loaded = load_model(
            model_config.model,
            dtype=_TORCH_DTYPES[model_config.dtype],
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
        _apply_thread_setting()
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
        prompt_list = _split_prompts(prompts)
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

        ids = [self._loop.submit(p, sp, sink) for p, sp in zip(prompt_list, param_list, strict=True)]
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
    def stats(self) -> Any:
        return self.engine.stats

    def close(self) -> None:
        self._loop.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    ) -> AsyncIterator[StreamDelta]:
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[StreamDelta] = asyncio.Queue()
        request_id = self.llm.submit(
            prompt, params or SamplingParams(), lambda d: loop.call_soon_threadsafe(deltas.put_nowait, d), request_id
        )
        finished = False
        try:
            while not finished:
                delta = await deltas.get()
                finished = delta.finished
                yield delta
        finally:
            if not finished:
                self.llm.abort(request_id)

    def abort(self, request_id: str) -> None:
        self.llm.abort(request_id)

    def close(self) -> None:
        self.llm.close()


def _apply_thread_setting() -> None:
    threads = env().num_threads
    if threads is not None:
        torch.set_num_threads(threads)


__all__ = ["LLM", "AsyncLLM", "EngineLoop", "SamplingParams", "TextStream"]
