"""The engine loop: one daemon thread owns an :class:`Engine` and loops submit / abort -> step.

Any thread may :meth:`EngineLoop.submit` or :meth:`EngineLoop.abort`; submissions that arrive
while a step runs join the batch at the next step. Each request's deltas go to the sink given at
submission, called on the loop thread. :class:`TextStream` is a blocking iterator over one
request's text.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch

from tritonlm.config import env
from tritonlm.errors import ConfigError, InferenceError, TritonLMError
from tritonlm.runtime.engine import Engine
from tritonlm.runtime.inputs import Prompt
from tritonlm.runtime.output_processor import failed_output
from tritonlm.runtime.outputs import RequestOutput, StreamDelta
from tritonlm.runtime.sampling_params import SamplingParams

Sink = Callable[[StreamDelta], None]


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
        apply_thread_setting()  # torch's thread count is per thread (an OpenMP setting)
        while self._take_work():
            self._deliver(self._step())
        self._finish_all(InferenceError("the engine was closed"))

    def _take_work(self) -> bool:
        """Wait for work; admit the submissions and apply the aborts. False once closed."""
        with self._cond:
            while not (self._submissions or self._aborts or self._closed or self.engine.has_unfinished_requests):
                self._cond.wait()
            if self._closed:
                return False
            submissions, self._submissions = self._submissions, []
            aborts, self._aborts = self._aborts, []
        for sub in submissions:
            self._admit(sub)
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

    def _admit(self, sub: _Submission) -> None:
        if sub.request_id in self._sinks:
            self._reject(sub, ConfigError(f"request id {sub.request_id!r} is already in use"))
            return
        try:
            self.engine.add_request(sub.prompt, sub.params, sub.request_id)
        except TritonLMError as exc:
            self._reject(sub, exc)
            return
        except Exception as exc:
            error = InferenceError(f"request {sub.request_id} could not be added: {exc!r}")
            error.__cause__ = exc
            self._reject(sub, error)
            return
        self._sinks[sub.request_id] = sub.sink

    @staticmethod
    def _reject(sub: _Submission, error: BaseException) -> None:
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
