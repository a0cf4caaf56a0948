"""Request bodies of the OpenAI HTTP API (the subset tritonlm serves), validated with pydantic.

Each request knows its engine prompt (:meth:`engine_prompt`) and its sampling fields
(:meth:`sampling_fields`, OpenAI spellings, for the runtime's one translator to
``SamplingParams``). Every declared field that is not in :data:`NON_SAMPLING_FIELDS` is a
sampling field, so a new sampling option is declared here and nowhere else in the server.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tritonlm.runtime.inputs import prompt_kind
from tritonlm.server.errors import APIError, field_path

# declared fields that shape the request or the response, not the sampling
NON_SAMPLING_FIELDS = frozenset({"model", "stream", "stream_options", "prompt", "messages", "echo"})


def _is_text(s: str) -> bool:
    """False for a string with a lone UTF-16 surrogate (JSON's ``"\\ud800"``), which no
    tokenizer or response body can encode."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def invalid_text_location(value: Any) -> tuple[Any, ...] | None:
    """Where in decoded JSON ``value`` a string (or an object key) is not valid Unicode text;
    None if nowhere. Iterative: the body may nest deeper than Python's recursion limit."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), value)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, str):
            if not _is_text(item):
                return loc
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and not _is_text(key):
                    return loc
                if isinstance(child, (str, dict, list)):
                    stack.append(((*loc, key), child))
        elif isinstance(item, list):
            stack.extend(((*loc, i), child) for i, child in enumerate(item) if isinstance(child, (str, dict, list)))
    return None


class _Request(BaseModel):
    # unknown OpenAI fields (user, metadata, ...) are accepted and ignored
    model_config = ConfigDict(extra="allow")
    prompt_field: ClassVar[str]  # the field holding the prompt, named by errors about it

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)  # the engine's max_n caps it (RequestTooLargeError)
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

    @model_validator(mode="before")
    @classmethod
    def _reject_invalid_text(cls, data: Any) -> Any:
        # an APIError (not a ValueError) leaves pydantic as is, naming the field at fault
        loc = invalid_text_location(data)
        if loc is not None:
            raise APIError(
                400,
                "the request holds a string that is not valid Unicode text (a lone UTF-16 surrogate)",
                code="invalid_unicode",
                param=field_path(loc),
            )
        return data

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
    prompt_field = "prompt"
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


class ContentPart(BaseModel):
    """One part of a message's content. Only ``text`` parts reach the model; parts of other
    types (images, audio) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = Field(default=None, validate_default=True)

    @field_validator("text")
    @classmethod
    def _text_part_has_text(cls, text: str | None, info: ValidationInfo) -> str | None:
        if text is None and info.data.get("type") == "text":
            raise ValueError("a 'text' content part needs a string 'text'")
        return text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: list[ContentPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_as_one_part(cls, content: Any) -> Any:
        # a plain string is one text part (a union type would put its member names in error locations)
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        if content is None or isinstance(content, list):
            return content
        raise ValueError("content must be a string, an array of content parts or null")

    def text(self) -> str | None:
        """The content as one text (its text parts joined); None without content."""
        if self.content is None:
            return None
        return "".join(p.text or "" for p in self.content if p.type == "text")


class ChatCompletionRequest(_Request):
    prompt_field = "messages"
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def engine_prompt(self) -> list[dict[str, Any]]:
        """The messages as dicts; content parts become plain text (text parts only)."""
        messages = []
        for message in self.messages:
            as_dict = message.model_dump(exclude_none=True)
            if message.content is not None:
                as_dict["content"] = message.text()
            messages.append(as_dict)
        return messages


OpenAIRequest = CompletionRequest | ChatCompletionRequest
