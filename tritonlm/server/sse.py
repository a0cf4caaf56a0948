"""Server-sent-event framing of a streamed response.

:func:`sse_events` turns one request's :class:`StreamDelta` stream into the SSE body: the
frame's head chunks, a chunk per text delta, the final chunks (or an error event) and
``[DONE]``. It stops early when the client has gone; closing the delta stream then aborts the
request, which frees its KV blocks. ``on_end`` receives the finished output (None when the
request did not finish) exactly once, whatever way the body ends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from tritonlm.runtime.outputs import RequestOutput, StreamDelta
from tritonlm.server.errors import error_from
from tritonlm.server.responses import ResponseFrame


def sse(payload: dict[str, Any] | str) -> bytes:
    """One ``data:`` event; a dict is sent as JSON."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


DONE = sse("[DONE]")


def _error_event(error: BaseException) -> bytes:
    err = error_from(error)
    return sse({"error": {"message": err.message, "type": err.type, "code": err.code}})


async def sse_events(
    deltas: AsyncGenerator[StreamDelta, None],
    first: StreamDelta,
    frame: ResponseFrame,
    *,
    num_completions: int,
    is_disconnected: Callable[[], Awaitable[bool]],
    on_end: Callable[[RequestOutput | None], None],
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed request whose first delta, ``first``, was already read."""
    output: RequestOutput | None = None
    try:
        for chunk in frame.head_chunks(num_completions):
            yield sse(chunk)
        delta: StreamDelta | None = first
        while delta is not None:
            if delta.text:
                yield sse(frame.text_chunk(delta.index, delta.text))
            if delta.finished:
                output = delta.output
            if output is not None or await is_disconnected():
                break
            delta = await anext(deltas, None)
        if output is not None:
            if output.error is not None:
                yield _error_event(output.error)
            else:
                for chunk in frame.final_chunks(output):
                    yield sse(chunk)
            yield DONE
    finally:
        await deltas.aclose()
        on_end(output)


__all__ = ["DONE", "sse", "sse_events"]
