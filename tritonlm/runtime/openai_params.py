"""The one translator from OpenAI-style request fields to :class:`SamplingParams`. No torch.

Every edge (the HTTP server, the DSPy engine, the local provider) passes its fields through
as a plain mapping (a pydantic ``model_dump()``, DSPy's config, provider ``**kwargs``); this
module alone knows the OpenAI spellings. Ranges are not checked here: ``SamplingParams``
validates its own fields and raises :class:`~tritonlm.errors.ConfigError`.

Mapping (a ``None`` value means "not given": the ``SamplingParams`` default applies):

* ``max_completion_tokens``, else ``max_tokens`` -> ``max_tokens`` (else ``default_max_tokens``)
* ``logprobs`` (bool, chat API) with ``top_logprobs`` -> ``logprobs = top_logprobs or 0`` when true;
  ``logprobs`` (int, completions API) -> ``logprobs``
* ``response_format``: ``{"type": "text"}`` -> nothing; ``{"type": "json_object"}`` -> a JSON
  object; ``{"type": "json_schema", "json_schema": {"schema": ...}}`` (OpenAI) or
  ``{"type": "json_schema", "schema": ...}`` (lm15) -> ``json_schema``
* same name on both sides: see :data:`DIRECT_FIELDS`.

Other keys are ignored, or rejected with :class:`RequestFieldError` when ``strict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tritonlm.errors import ConfigError, ContextTooLongError
from tritonlm.runtime.sampling_params import SamplingParams

# OpenAI / vLLM fields that are SamplingParams fields of the same name
DIRECT_FIELDS: frozenset[str] = frozenset(
    {
        "n",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "seed",
        "stop",
        "stop_token_ids",
        "ignore_eos",
        "skip_special_tokens",
    }
)
TRANSLATED_FIELDS: frozenset[str] = frozenset(
    {"max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "response_format"}
)
KNOWN_FIELDS: frozenset[str] = DIRECT_FIELDS | TRANSLATED_FIELDS

# the schema of ``response_format={"type": "json_object"}`` (JSON mode)
JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


class RequestFieldError(ConfigError):
    """A request field that cannot be honoured; ``param`` is its name as the caller spelled it."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


class MaxTokensTooLongError(ContextTooLongError):
    """The requested ``max_tokens`` alone fills the model's context; ``param`` names the field."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


def sampling_params_from_openai(
    fields: Mapping[str, Any],
    *,
    default_max_tokens: int = 256,
    max_model_len: int | None = None,
    strict: bool = False,
) -> SamplingParams:
    """``SamplingParams`` for OpenAI-style ``fields`` (see the module docstring).

    ``max_model_len``: a given ``max_tokens`` of at least this many tokens raises
    :class:`MaxTokensTooLongError` (no prompt would fit). ``strict``: unknown keys raise
    :class:`RequestFieldError` instead of being ignored.
    """
    if strict:
        unknown = sorted(set(fields) - KNOWN_FIELDS)
        if unknown:
            raise RequestFieldError(f"unsupported generation options {unknown}", param=unknown[0])
    options: dict[str, Any] = {name: fields[name] for name in DIRECT_FIELDS if fields.get(name) is not None}
    options["max_tokens"] = _max_tokens(fields, default_max_tokens, max_model_len)
    logprobs = _logprobs(fields)
    if logprobs is not None:
        options["logprobs"] = logprobs
    schema = _response_format_schema(fields.get("response_format"))
    if schema is not None:
        options["json_schema"] = schema
    return SamplingParams(**options)


def _max_tokens(fields: Mapping[str, Any], default: int, max_model_len: int | None) -> Any:
    for name in ("max_completion_tokens", "max_tokens"):
        value = fields.get(name)
        if value is None:
            continue
        if max_model_len is not None and isinstance(value, int) and value >= max_model_len:
            raise MaxTokensTooLongError(
                f"{name}={value} does not fit this model's context of {max_model_len} tokens (prompt included)",
                param=name,
            )
        return value
    return default


def _logprobs(fields: Mapping[str, Any]) -> Any:
    value = fields.get("logprobs")
    if isinstance(value, bool):  # the chat API: a flag, the count is top_logprobs
        return (fields.get("top_logprobs") or 0) if value else None
    return value


def _response_format_schema(fmt: Any) -> dict[str, Any] | bool | None:
    """The JSON schema ``response_format`` asks for (None: free text)."""
    if fmt is None:
        return None
    if not isinstance(fmt, Mapping):
        raise RequestFieldError("response_format must be an object with a 'type'", param="response_format")
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return dict(JSON_OBJECT_SCHEMA)
    if kind != "json_schema":
        raise RequestFieldError(f"response_format.type={kind!r} is not supported", param="response_format")
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else fmt.get("schema")
    if isinstance(schema, Mapping):
        return dict(schema)
    if isinstance(schema, bool):
        return schema
    raise RequestFieldError("response_format.json_schema.schema must be a JSON schema object", param="response_format")


__all__ = [
    "DIRECT_FIELDS",
    "JSON_OBJECT_SCHEMA",
    "KNOWN_FIELDS",
    "MaxTokensTooLongError",
    "RequestFieldError",
    "sampling_params_from_openai",
]
