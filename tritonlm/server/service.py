"""The one handler body behind ``/v1/chat/completions`` and ``/v1/completions``.

:class:`Server` owns the engine handle, the model name and the request counters. A request
is translated to ``SamplingParams`` by the runtime's OpenAI translator, submitted, and answered
as one body or as an SSE stream in the endpoint's :class:`ResponseShape`. Engine failures
become OpenAI error bodies (:mod:`tritonlm.server.errors`); a streamed request fails with a
4xx before any byte is sent when the engine refuses it outright. While the server waits on the
engine (a whole non-streamed result, a stream's first delta) it also watches the connection: a
client that disconnects has its request aborted at once, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from tritonlm.errors import ConfigError
from tritonlm.runtime.inputs import Prompt
from tritonlm.runtime.llm import LLM, AsyncLLM
from tritonlm.runtime.openai_params import MaxTokensTooLongError, RequestFieldError, sampling_params_from_openai
from tritonlm.runtime.outputs import RequestOutput, StreamDelta
from tritonlm.runtime.sampling_params import SamplingParams
from tritonlm.server.errors import APIError, client_closed, error_from
from tritonlm.server.metrics import RequestCounters, render_metrics
from tritonlm.server.protocol import OpenAIRequest
from tritonlm.server.responses import ResponseFrame, ResponseShape
from tritonlm.server.sse import sse_events

T = TypeVar("T")


async def _disconnected(http: Request) -> None:
    """Return once the client has disconnected. The request body has been read, so the next ASGI
    message is ``http.disconnect`` (Starlette's ``listen_for_disconnect`` waits the same way)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


class ClientDisconnected(Exception):
    """The client went away while its request was waiting on the engine (the work was cancelled)."""


async def unless_disconnected(http: Request, work: Awaitable[T]) -> T:
    """The result of ``work``, or :class:`ClientDisconnected` (``work`` cancelled) when the client
    disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(http))
    try:
        done, _ = await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientDisconnected
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Server:
    """State shared by the handlers: the engine, the served model's name and the counters."""

    def __init__(self, llm: LLM, model_name: str) -> None:
        self.llm = llm
        self.async_llm = AsyncLLM.from_llm(llm)
        self.model_name = model_name
        self.counters = RequestCounters()

    async def handle(
        self, req: OpenAIRequest, shape: ResponseShape, http: Request
    ) -> dict[str, Any] | StreamingResponse:
        """The response to ``req``: a JSON body, or a ``StreamingResponse`` when it streams."""
        self.check_model(req.model)
        try:
            prompt = req.engine_prompt()
            params = self.sampling_params(req)
        except APIError:
            raise
        except (TypeError, ValueError) as exc:  # the request's own values: the engine has not seen it yet
            raise APIError(400, f"invalid request: {exc}") from exc
        frame = ResponseFrame(
            shape,
            id=f"{shape.id_prefix}{uuid.uuid4().hex[:24]}",
            created=int(time.time()),
            model=self.model_name,
            include_usage=req.include_usage,
        )
        if not req.stream:
            return frame.body(await self.run_to_end(prompt, params, http, req.prompt_field))
        deltas, first = await self.start(prompt, params, http, req.prompt_field)
        events = sse_events(
            deltas,
            first,
            frame,
            num_completions=params.n,
            is_disconnected=http.is_disconnected,
            on_end=self.counters.account,
        )
        return StreamingResponse(events, media_type="text/event-stream")

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(
                404,
                f"the model '{name}' does not exist; this server has '{self.model_name}'",
                code="model_not_found",
                param="model",
            )

    def sampling_params(self, req: OpenAIRequest) -> SamplingParams:
        try:
            return sampling_params_from_openai(req.sampling_fields(), max_model_len=self.llm.max_model_len)
        except MaxTokensTooLongError as exc:
            raise APIError(400, str(exc), code="context_length_exceeded", param=exc.param) from exc
        except RequestFieldError as exc:
            raise APIError(400, str(exc), param=exc.param) from exc
        except ConfigError as exc:
            raise APIError(400, str(exc)) from exc

    async def start(
        self, prompt: Prompt, params: SamplingParams, http: Request, prompt_param: str
    ) -> tuple[AsyncGenerator[StreamDelta, None], StreamDelta]:
        """Submit and wait for the first delta, so a refused request fails before any response is sent."""
        request_id = uuid.uuid4().hex[:24]
        deltas = self.async_llm.generate(prompt, params, request_id=request_id)
        try:
            first = await unless_disconnected(http, anext(deltas))
        except ClientDisconnected:
            await self._abandon(request_id, deltas)
            raise client_closed() from None
        if first.finished and first.output is not None and first.output.error is not None:
            await deltas.aclose()
            self.counters.account_rejected()
            raise error_from(first.output.error, prompt_param)
        return deltas, first

    async def run_to_end(
        self, prompt: Prompt, params: SamplingParams, http: Request, prompt_param: str
    ) -> RequestOutput:
        request_id = uuid.uuid4().hex[:24]
        try:
            output = await unless_disconnected(http, self.async_llm.complete(prompt, params, request_id=request_id))
        except ClientDisconnected:
            await self._abandon(request_id)
            raise client_closed() from None
        self.counters.account(output)
        if output.error is not None:
            raise error_from(output.error, prompt_param)
        return output

    async def _abandon(self, request_id: str, deltas: AsyncGenerator[StreamDelta, None] | None = None) -> None:
        """Abort a request whose client left (cancelling its wait already did; this says so)."""
        self.async_llm.abort(request_id)
        if deltas is not None:
            await deltas.aclose()
        self.counters.account(None)

    def health(self) -> tuple[bool, str]:
        """Whether the engine serves (its loop alive and stepping), and why not."""
        status = self.llm.health()
        return bool(status.ok), str(status.detail)

    def metrics_text(self) -> str:
        """``/metrics``: the counters and the engine's snapshot, Prometheus text format."""
        return render_metrics(self.counters, self.llm.metrics())


__all__ = ["Server"]
