"""The engine loop: one daemon thread owns an :class:`Engine` and loops admit / abort -> step.

Any thread may :meth:`EngineLoop.submit` or :meth:`EngineLoop.abort`. A submission is prepared
(checked, tokenized, its grammar compiled: :meth:`Engine.prepare`) on a worker thread, never on
the loop thread, so an expensive or hostile request cannot stall the step loop: the requests
already running keep stepping while it waits in the preparing state, and prepared requests join
the batch at the next step. Unconstrained requests are prepared on their own workers, so they
never wait behind a grammar compile. Aborting a request that is still being prepared cancels its
compile. Each request's deltas go to the sink given at submission, always called on the loop
thread. :class:`TextStream` is a blocking iterator over one request's text.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from tritonlm.config import env
from tritonlm.errors import CompileCancelled, ConfigError, InferenceError, TritonLMError
from tritonlm.runtime.engine import Engine, PreparedRequest
from tritonlm.runtime.inputs import Prompt
from tritonlm.runtime.metrics import EngineHealth
from tritonlm.runtime.output_processor import aborted_output, failed_output
from tritonlm.runtime.outputs import RequestOutput, StreamDelta
from tritonlm.runtime.sampling_params import SamplingParams

Sink = Callable[[StreamDelta], None]

# /health reports a loop that holds work but has not finished a step for this long as stalled
STALL_LIMIT_S = 60.0


@dataclass
class _Submission:
    request_id: str
    prompt: Prompt
    params: SamplingParams
    sink: Sink
    cancelled: threading.Event = field(default_factory=threading.Event)


# a prepared submission, or why it cannot run
_Prepared = tuple[_Submission, PreparedRequest | BaseException]


class EngineLoop:
    """Runs one :class:`Engine` on a daemon thread; ``submit`` and ``abort`` are thread-safe.

    Every delta of a request goes to the sink given at submission, called on the loop
    thread; the last one has ``finished=True`` and carries the :class:`RequestOutput`.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cond = threading.Condition()
        # guarded by _cond: submissions being prepared, prepared ones, aborts not yet applied
        self._preparing: dict[str, _Submission] = {}
        self._ready: list[_Prepared] = []
        self._aborts: list[str] = []
        self._closed = False
        # loop thread only
        self._sinks: dict[str, Sink] = {}
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self._tokenize_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tritonlm-tokenize")
        self._compile_pool = ThreadPoolExecutor(
            max_workers=engine.config.num_compile_workers, thread_name_prefix="tritonlm-compile"
        )
        self._last_progress = time.monotonic()  # the end of the last step, or of the last idle wait
        self.loop_error: BaseException | None = None

    def new_request_id(self) -> str:
        return f"r{next(self._ids)}"

    def submit(self, prompt: Prompt, params: SamplingParams, sink: Sink, request_id: str | None = None) -> str:
        """Queue one request; its deltas (or its rejection) reach ``sink``. Returns its id."""
        request_id = request_id if request_id is not None else self.new_request_id()
        self.submit_many([(prompt, params, sink, request_id)])
        return request_id

    def submit_many(self, requests: Sequence[tuple[Prompt, SamplingParams, Sink, str]]) -> None:
        """Queue requests that are prepared together and join the batch at the same step, in order."""
        subs = [_Submission(request_id, prompt, params, sink) for prompt, params, sink, request_id in requests]
        with self._cond:
            if self._closed:
                raise InferenceError("the engine is closed")
            fresh: list[_Submission] = []
            for sub in subs:
                if sub.request_id in self._preparing:
                    self._ready.append((sub, ConfigError(f"request id {sub.request_id!r} is already in use")))
                else:
                    self._preparing[sub.request_id] = sub
                    fresh.append(sub)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tritonlm-engine", daemon=True)
                self._thread.start()
            self._cond.notify()
        if fresh:
            constrained = any(isinstance(s.params, SamplingParams) and s.params.has_constraint for s in fresh)
            pool = self._compile_pool if constrained else self._tokenize_pool
            pool.submit(self._prepare, fresh)

    def _prepare(self, subs: list[_Submission]) -> None:
        """Worker thread: prepare each submission, then hand them all to the loop at once."""
        done: list[_Prepared] = []
        for sub in subs:
            try:
                done.append((sub, self.engine.prepare(sub.prompt, sub.params, sub.cancelled.is_set)))
            except BaseException as exc:  # reaches the loop thread as the request's rejection
                done.append((sub, exc))
        with self._cond:
            for sub, _ in done:
                if self._preparing.get(sub.request_id) is sub:
                    del self._preparing[sub.request_id]
            self._ready.extend(done)
            self._cond.notify()

    def abort(self, request_id: str) -> None:
        with self._cond:
            sub = self._preparing.get(request_id)
            if sub is not None:
                sub.cancelled.set()  # its compile stops; the loop delivers the abort when it returns
            self._aborts.append(request_id)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for sub in self._preparing.values():
                sub.cancelled.set()
            self._cond.notify()
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        self._compile_pool.shutdown(wait=False, cancel_futures=True)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)

    def health(self) -> EngineHealth:
        """Whether the loop serves requests (any thread)."""
        if self.loop_error is not None:
            return EngineHealth(False, f"the engine loop failed: {self.loop_error!r}")
        if self._closed:
            return EngineHealth(False, "the engine is closed")
        thread = self._thread
        if thread is not None and not thread.is_alive():
            return EngineHealth(False, "the engine loop thread has exited")
        idle_for = time.monotonic() - self._last_progress
        if self.engine.has_unfinished_requests and idle_for > STALL_LIMIT_S:
            return EngineHealth(False, f"the engine holds requests but has not finished a step for {idle_for:.0f} s")
        return EngineHealth(True, "ok")

    def _run(self) -> None:
        apply_thread_setting()  # torch's thread count is per thread (an OpenMP setting)
        while self._take_work():
            self._deliver(self._step())
            self._last_progress = time.monotonic()
        self._close_all()

    def _take_work(self) -> bool:
        """Wait for work; admit the prepared submissions and apply the aborts. False once closed."""
        with self._cond:
            while not (self._ready or self._aborts or self._closed or self.engine.has_unfinished_requests):
                self._last_progress = time.monotonic()
                self._cond.wait()
            if self._closed:
                return False
            ready, self._ready = self._ready, []
            aborts, self._aborts = self._aborts, []
        for sub, prepared in ready:
            self._admit(sub, prepared)
        for request_id in aborts:
            self.engine.abort(request_id)
        return True

    def _step(self) -> list[StreamDelta]:
        try:
            return self.engine.step()
        except Exception as exc:  # a bug in the engine itself: fail everything in flight
            self.loop_error = exc
            error = InferenceError(f"the engine loop failed: {exc!r}")
            error.__cause__ = exc
            self._finish_all(error)
            self.engine.abort_all()
            return []

    def _deliver(self, deltas: list[StreamDelta]) -> None:
        for delta in deltas:
            sink = self._sinks.get(delta.request_id)
            if sink is None:
                continue
            if delta.finished:
                del self._sinks[delta.request_id]
            sink(delta)

    def _finish_all(self, error: InferenceError) -> None:
        """End every request with a sink: a finished delta whose output carries ``error``."""
        sinks, self._sinks = self._sinks, {}
        for request_id, sink in sinks.items():
            sink(StreamDelta(request_id, 0, "", finished=True, output=failed_output(request_id, None, error)))

    def _close_all(self) -> None:
        """After the loop ends: every request, admitted or not, ends with "the engine was closed"."""
        error = InferenceError("the engine was closed")
        self._finish_all(error)
        with self._cond:
            pending = [sub for sub, _ in self._ready] + list(self._preparing.values())
            self._ready, self._preparing = [], {}
        for sub in pending:
            self._reject(sub, error)

    def _admit(self, sub: _Submission, prepared: PreparedRequest | BaseException) -> None:
        if sub.cancelled.is_set():
            n = sub.params.n if isinstance(sub.params, SamplingParams) else 1
            output = aborted_output(sub.request_id, sub.prompt, n)
            sub.sink(StreamDelta(sub.request_id, 0, "", finished=True, output=output))
            return
        if isinstance(prepared, BaseException):
            self._reject(sub, prepared)
            return
        if sub.request_id in self._sinks:
            self._reject(sub, ConfigError(f"request id {sub.request_id!r} is already in use"))
            return
        try:
            self.engine.add_prepared(prepared, sub.request_id)
        except Exception as exc:
            self._reject(sub, exc)
            return
        self._sinks[sub.request_id] = sub.sink

    @staticmethod
    def _reject(sub: _Submission, error: BaseException) -> None:
        if isinstance(error, CompileCancelled) or not isinstance(error, TritonLMError):
            wrapped = InferenceError(f"request {sub.request_id} could not be added: {error!r}")
            wrapped.__cause__ = error
            error = wrapped
        n = sub.params.n if isinstance(sub.params, SamplingParams) else 1
        output = failed_output(sub.request_id, sub.prompt, error, n)
        sub.sink(StreamDelta(sub.request_id, 0, "", finished=True, output=output))


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

    def _deltas(self) -> Generator[str, None, None]:
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


def apply_thread_setting() -> None:
    """Apply ``TRITONLM_NUM_THREADS`` (if set) to the calling thread's torch."""
    threads = env().num_threads
    if threads is not None:
        torch.set_num_threads(threads)


__all__ = ["EngineLoop", "Sink", "TextStream", "apply_thread_setting"]
