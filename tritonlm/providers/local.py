"""``LocalProvider``: a provider over an in-process tritonlm engine (:class:`AsyncLLM`).

Prompts are sent as one user chat message (the model's chat template is applied), after an
optional system message. Structured output runs under the engine's JSON-schema constraint, so
the text is a JSON object valid under the schema unless generation was cut off by
``max_tokens`` (then :class:`StructuredOutputError` carries the partial text).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from tritonlm.errors import ConfigError, InferenceError
from tritonlm.providers.base import BaseProvider, ProviderCapabilities
from tritonlm.providers.errors import StructuredOutputError
from tritonlm.providers.json_output import parse_structured_output

# SamplingParams fields a caller may pass through **kw (others are rejected, not ignored)
_PASSTHROUGH = frozenset(
    {
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "stop_token_ids",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "ignore_eos",
    }
)

SCHEMA_INSTRUCTION = "Answer with one JSON object that is valid under this JSON schema:\n{schema}"


class LocalProvider(BaseProvider):
    """A provider on a local :class:`~tritonlm.runtime.llm.AsyncLLM` (or an ``LLM``, wrapped).

    ``system_prompt`` (optional) starts every conversation. ``describe_schema`` appends the
    schema to the prompt of structured calls, so the model knows the field meanings the
    constraint alone cannot convey. Many concurrent calls share the engine's batches.
    """

    def __init__(
        self,
        engine: Any,
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
        self.engine = engine
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
        return len(self.engine.llm.engine.tokenize_prompt(self.messages(prompt)))

    def _params(self, max_tokens: int, temperature: float, kw: dict[str, Any], **constraint: Any) -> Any:
        from tritonlm.runtime.sampling_params import SamplingParams

        unknown = set(kw) - _PASSTHROUGH
        if unknown:
            raise ConfigError(f"{self.name}: unsupported generation options {sorted(unknown)}")
        return SamplingParams(max_tokens=max_tokens, temperature=temperature, **kw, **constraint)

    async def _run(self, prompt: Any, params: Any) -> tuple[str, str | None]:
        """(text, finish_reason) of one request; reports its usage; engine errors re-raised."""
        output = None
        async for delta in self.engine.generate(prompt, params):
            if delta.finished:
                output = delta.output
        if output is None:
            raise InferenceError(f"{self.name}: the engine finished without an output")
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
        params = self._params(max_tokens, temperature, kw, json_schema=schema)
        text, finish_reason = await self._run(self.messages(prompt), params)
        if finish_reason == "length":
            raise StructuredOutputError(
                f"{self.name}: max_tokens={max_tokens} ran out before the JSON object was complete", raw_text=text
            )
        return parse_structured_output(text, schema, extract=False)

    async def check_health(self) -> bool:
        """True when a one-token request goes through the engine."""
        from tritonlm.runtime.sampling_params import SamplingParams

        try:
            output = None
            async for delta in self.engine.generate([0], SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)):
                if delta.finished:
                    output = delta.output
            return output is not None and output.error is None
        except Exception:
            return False

    async def aclose(self) -> None:
        self.engine.close()


__all__ = ["LocalProvider"]
