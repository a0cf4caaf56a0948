"""Test doubles for the DSPy engine protocol, and a recorder of what the tritonlm LLM produced."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import dspy
from dspy.lm15 import (
    Message,
    Request,
    Response,
    StreamDeltaEvent,
    StreamEndEvent,
    StreamStartEvent,
    TextDelta,
    TextPart,
    Usage,
)

from tritonlm.dspy_adapter.engine import TritonEngine
from tritonlm.runtime.llm import LLM
from tritonlm.runtime.outputs import RequestOutput


class ScriptedEngine:
    """Answers each request with the next scripted text; records the requests. Cannot constrain."""

    supports_response_schema = False

    def __init__(self, texts: list[str], stream_piece: int = 3) -> None:
        self.texts = list(texts)
        self.requests: list[Request] = []
        self.stream_piece = stream_piece

    def _next(self, request: Request) -> str:
        self.requests.append(request)
        return self.texts.pop(0)

    def complete(self, request: Request) -> Response:
        text = self._next(request)
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(input_tokens=1, output_tokens=1, total_tokens=2),
        )

    def stream(self, request: Request) -> Iterator[Any]:
        text = self._next(request)
        yield StreamStartEvent(id=None, model=request.model)
        for start in range(0, len(text), self.stream_piece):
            yield StreamDeltaEvent(delta=TextDelta(text=text[start : start + self.stream_piece]))
        yield StreamEndEvent(finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=1, total_tokens=2))

    def close(self) -> None:
        pass


class UnconstrainedTritonEngine(TritonEngine):
    """tritonlm's engine, advertising no structured-output support (adapters send no schema)."""

    supports_response_schema = False


def scripted_lm(texts: list[str]) -> tuple[dspy.LM, ScriptedEngine]:
    engine = ScriptedEngine(texts)
    return dspy.LM("scripted/model", engine=engine, cache=False, num_retries=0), engine


class OutputRecorder:
    """Wraps ``llm.generate`` to keep every RequestOutput (thread-safe)."""

    def __init__(self, llm: LLM) -> None:
        self.outputs: list[RequestOutput] = []
        self._lock = threading.Lock()
        self._generate = llm.generate
        self._llm = llm

    def __enter__(self) -> OutputRecorder:
        def generate(prompts: Any, params: Any = None) -> list[RequestOutput]:
            outputs = self._generate(prompts, params)
            with self._lock:
                self.outputs.extend(outputs)
            return outputs

        self._llm.generate = generate  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self._llm.generate
