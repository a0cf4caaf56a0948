"""``LocalProvider``: a provider over an in-process tritonlm engine (:class:`AsyncLLM`).

Prompts are sent as one user chat message (the model's chat template is applied), after an
optional system message. Structured output runs under the engine's JSON-schema constraint, so
the text is a JSON object valid under the schema unless generation was cut off by
``max_tokens`` (then :class:`StructuredOutputError` carries the partial text).

Generation options (``**kw``) use the OpenAI spellings and go through the runtime's one
translator to ``SamplingParams`` (``strict``: an unknown option is refused, not ignored); the
options that shape the result rather than the sampling (:data:`PROVIDER_OWNED_OPTIONS`) are
the provider's own and refused too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from tritonlm.errors import ConfigError
from tritonlm.providers.base import BaseProvider, ProviderCapabilities
from tritonlm.providers.errors import StructuredOutputError
from tritonlm.providers.json_output import parse_structured_output

if TYPE_CHECKING:
    from tritonlm.runtime.llm import LLM, AsyncLLM
    from tritonlm.runtime.sampling_params import SamplingParams

# one completion's text is the result, and structured output is generate_structured's job
PROVIDER_OWNED_OPTIONS = frozenset({"n", "logprobs", "top_logprobs", "response_format"})

SCHEMA_INSTRUCTION = "Answer with one JSON object that is valid under this JSON schema:\n{schema}"


class LocalProvider(BaseProvider):
    """A provider on a local :class:`~tritonlm.runtime.llm.AsyncLLM` (or an ``LLM``, wrapped).

    ``system_prompt`` (optional) starts every conversation. ``describe_schema`` appends the
    schema to the prompt of structured calls, so the model knows the field meanings the
    constraint alone cannot convey. Many concurrent calls share the engine's batches.
    """

    def __init__(
        self,
        engine: AsyncLLM | LLM,
        *,
        name: str = "tritonlm-local",
        system_prompt: str | None = None,
        describe_schema: bool = True,
    ) -> None:
        from tritonlm.runtime.llm import LLM, AsyncLLM

        if isinstance(engine, LLM):
            engine = AsyncLLM.from_llm(engine)
        if not isinstance(engine, AsyncLLM):
            raise ConfigError(f"LocalProvider needs an AsyncLLM or LLM, got {type(engine).__name__}")
        super().__init__(name, ProviderCapabilities(streaming=True, structured_output=True, reasoning=False))
        self.engine: AsyncLLM = engine
        self.system_prompt = system_prompt
        self.describe_schema = describe_schema

    def messages(self, prompt: str) -> list[dict[str, str]]:
        """The chat the engine receives for ``prompt``."""
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt must be a str, got {type(prompt).__name__}")
        chat = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        chat.append({"role": "user", "content": prompt})
        return chat

    def count_prompt_tokens(self, prompt: str) -> int | None:
        return len(self.engine.tokenize(self.messages(prompt)))

    def _params(
        self, max_tokens: int, temperature: float, kw: dict[str, Any], schema: dict[str, Any] | None = None
    ) -> SamplingParams:
        from tritonlm.runtime.openai_params import RequestFieldError, sampling_params_from_openai

        owned = sorted(PROVIDER_OWNED_OPTIONS & set(kw))
        if owned:
            raise ConfigError(f"{self.name}: unsupported generation options {owned}")
        fields = {**kw, "max_tokens": max_tokens, "temperature": temperature}
        if schema is not None:
            fields["response_format"] = {"type": "json_schema", "schema": schema}
        try:
            return sampling_params_from_openai(fields, strict=True)
        except RequestFieldError as exc:
            raise ConfigError(f"{self.name}: {exc}") from exc

    async def _run(self, prompt: Any, params: SamplingParams) -> tuple[str, str | None]:
        """(text, finish_reason) of one request; reports its usage; engine errors re-raised."""
        output = await self.engine.complete(prompt, params)
        self.report_usage(output.usage.prompt_tokens, output.usage.completion_tokens)
        if output.error is not None:
            raise output.error
        completion = output.outputs[0]
        return completion.text, completion.finish_reason

    async def generate_text(self, prompt: str, max_tokens: int = 2048, temperature: float = 0.3, **kw: Any) -> str:
        text, _ = await self._run(self.messages(prompt), self._params(max_tokens, temperature, kw))
        return text

    async def generate_stream(self, prompt: str, **kw: Any) -> AsyncIterator[str]:
        max_tokens = kw.pop("max_tokens", 2048)
        temperature = kw.pop("temperature", 0.3)
        params = self._params(max_tokens, temperature, kw)
        output = None
        async for delta in self.engine.generate(self.messages(prompt), params):
            if delta.index == 0 and delta.text:
                yield delta.text
            if delta.finished:
                output = delta.output
        if output is not None:
            self.report_usage(output.usage.prompt_tokens, output.usage.completion_tokens)
            if output.error is not None:
                raise output.error

    async def generate_structured(self, prompt: str, schema: dict[str, Any], **kw: Any) -> dict[str, Any]:
        max_tokens = kw.pop("max_tokens", 2048)
        temperature = kw.pop("temperature", 0.3)
        if self.describe_schema:
            prompt = f"{prompt}\n\n{SCHEMA_INSTRUCTION.format(schema=json.dumps(schema, separators=(',', ':')))}"
        params = self._params(max_tokens, temperature, kw, schema)
        text, finish_reason = await self._run(self.messages(prompt), params)
        if finish_reason == "length":
            raise StructuredOutputError(
                f"{self.name}: max_tokens={max_tokens} ran out before the JSON object was complete", raw_text=text
            )
        return parse_structured_output(text, schema, extract=False)

    async def check_health(self) -> bool:
        """True when a one-token request goes through the engine."""
        try:
            params = self._params(1, 0.0, {"ignore_eos": True})
            output = await self.engine.complete([0], params)
            return output.error is None
        except Exception:
            return False

    async def aclose(self) -> None:
        self.engine.close()


__all__ = ["LocalProvider"]
