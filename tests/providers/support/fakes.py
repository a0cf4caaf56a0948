"""A scripted provider for the adapter tests and the overhead bench: answers instantly (or
after ``delay_s``) from queued responses, records every call, reports the usage it is given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from tritonlm.providers import BaseProvider, ProviderCapabilities


@dataclass(frozen=True)
class RecordedCall:
    method: str
    prompt: str
    kwargs: dict[str, Any]


Response = Any  # a str / dict, an exception to raise, or a callable(prompt) -> either


class ScriptedProvider(BaseProvider):
    def __init__(
        self,
        *,
        structured_output: bool = True,
        streaming: bool = False,
        texts: list[Response] | None = None,
        objects: list[Response] | None = None,
        usage: tuple[int, int] | None = (11, 7),
        delay_s: float = 0.0,
        repeat_last: bool = False,
    ) -> None:
        super().__init__("scripted", ProviderCapabilities(streaming=streaming, structured_output=structured_output))
        self.texts = list(texts or [])
        self.objects = list(objects or [])
        self.usage = usage
        self.delay_s = delay_s
        self.repeat_last = repeat_last
        self.calls: list[RecordedCall] = []
        self.in_flight = 0
        self.max_in_flight = 0  # most calls answered at once

    def _next(self, queue: list[Response], prompt: str) -> Any:
        if not queue:
            raise AssertionError("ScriptedProvider: no response queued")
        item = queue[0] if (self.repeat_last and len(queue) == 1) else queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Callable):  # type: ignore[arg-type]
            item = item(prompt)
        return item

    async def _answer(self, method: str, prompt: str, kwargs: dict[str, Any], queue: list[Response]) -> Any:
        self.calls.append(RecordedCall(method, prompt, kwargs))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        answer = self._next(queue, prompt)
        if self.usage is not None:
            self.report_usage(*self.usage)
        return answer

    async def generate_text(self, prompt: str, max_tokens: int = 2048, temperature: float = 0.3, **kw: Any) -> str:
        return await self._answer(
            "generate_text", prompt, {"max_tokens": max_tokens, "temperature": temperature, **kw}, self.texts
        )

    async def generate_stream(self, prompt: str, **kw: Any) -> AsyncIterator[str]:
        text = await self._answer("generate_stream", prompt, kw, self.texts)
        for piece in text.split(" "):
            yield piece

    async def generate_structured(self, prompt: str, schema: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return await self._answer("generate_structured", prompt, {"schema": schema, **kw}, self.objects)

    async def check_health(self) -> bool:
        return True
