"""Request bodies of the OpenAI HTTP API (the subset tritonlm serves), validated with pydantic.

Each request knows its engine prompt (:meth:`engine_prompt`) and its sampling fields
(:meth:`sampling_fields`, OpenAI spellings, for the runtime's one translator to
``SamplingParams``). Every declared field that is not in :data:`NON_SAMPLING_FIELDS` is a
sampling field, so a new sampling option is declared here and nowhere else in the server.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tritonlm.runtime.inputs import prompt_kind
from tritonlm.server.errors import APIError

# declared fields that shape the request or the response, not the sampling
NON_SAMPLING_FIELDS = frozenset({"model", "stream", "stream_options", "prompt", "messages", "echo"})


class _Request(BaseModel):
    # unknown OpenAI fields (user, metadata, ...) are accepted and ignored
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=64)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    response_format: dict[str, Any] | None = None
    # extensions (vLLM spellings)
    top_k: int = Field(default=0, ge=-1)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    ignore_eos: bool = False

    def engine_prompt(self) -> Any:
        """What the engine receives: text, token ids or chat messages."""
        raise NotImplementedError

    def sampling_fields(self) -> dict[str, Any]:
        """The declared sampling fields (extra, unknown fields excluded), OpenAI spellings."""
        names = set(type(self).model_fields) - NON_SAMPLING_FIELDS
        return self.model_dump(include=names)

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk (``stream_options.include_usage``)."""
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False

    def engine_prompt(self) -> str | list[int]:
        """The one prompt (text or token ids); a batch of several is refused."""
        prompt: Any = self.prompt
        if prompt_kind(prompt) is None:  # a batch: a list of texts or of token-id lists
            if len(prompt) != 1:
                raise APIError(
                    400, "batched prompts are not supported in one request; send one prompt per request", param="prompt"
                )
            prompt = prompt[0]
        if prompt == []:
            raise APIError(400, "the prompt is empty", param="prompt")
        return prompt


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def engine_prompt(self) -> list[dict[str, Any]]:
        """The messages as dicts; content parts become plain text (text parts only)."""
        messages = [m.model_dump(exclude_none=True) for m in self.messages]
        for m in messages:
            if isinstance(m.get("content"), list):
                m["content"] = "".join(p.get("text", "") for p in m["content"] if p.get("type") == "text")
        return messages


OpenAIRequest = CompletionRequest | ChatCompletionRequest
