"""``ProviderAdapter``: what code generators call. ``await adapter(prompt=..., schema=...)``
returns a ``dspy.Prediction`` with the schema's fields.

Routing: with a schema, ``use_xgrammar=True`` and a provider with structured output, the
provider's ``generate_structured`` (constrained decoding) produces the object; otherwise
``generate_text`` runs and the object is extracted from the text (fenced blocks, then the
first balanced object). Either way the object is validated against the schema, and a
:class:`StructuredOutputError` carrying the raw text is raised when it does not validate.
Without a schema the prediction has one field, ``text``.

Failures: a provider that raises surfaces as :class:`ProviderError` (cause attached);
:class:`StructuredOutputError`, :class:`ResourceLimitExceeded` and the ``ConfigError`` of bad
arguments pass through unchanged, and ``asyncio.CancelledError`` is never wrapped.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from tritonlm.errors import ConfigError
from tritonlm.prediction import prediction_from_dict
from tritonlm.providers.base import Provider, TokenUsage, collect_usage
from tritonlm.providers.errors import ProviderError, ResourceLimitExceeded, StructuredOutputError
from tritonlm.providers.json_output import parse_structured_output, validated
from tritonlm.providers.resources import ResourceTracker, ResourceUsage

TEXT_FIELD = "text"


class ProviderConfig(BaseModel):
    """Defaults of every adapter call (each may be overridden per call).

    ``use_xgrammar`` means "use constrained decoding for schema calls" (the name is the one
    existing generators pass); it requires a provider with structured output.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(default=2048, ge=1)
    temperature: float = Field(default=0.3, ge=0, allow_inf_nan=False)
    top_p: float = Field(default=0.95, gt=0, le=1, allow_inf_nan=False)
    use_xgrammar: StrictBool = True
    track_resources: StrictBool = True


def _checked_overrides(max_tokens: Any, temperature: Any, top_p: Any) -> None:
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ConfigError(f"max_tokens={max_tokens!r}: must be an integer >= 1")
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"{name}={value!r}: must be a finite number")
    if temperature < 0:
        raise ConfigError(f"temperature={temperature!r}: must be >= 0")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p={top_p!r}: must be in (0, 1]")


class ProviderAdapter:
    """Schema-shaped generation over a :class:`Provider`, with resource tracking.

    ``config.track_resources`` gives the adapter a :class:`ResourceTracker` without limits;
    :meth:`set_resource_tracker` replaces it (one with :class:`ResourceLimits`, or one shared
    by several adapters) or removes it (``None``).
    """

    def __init__(self, provider: Provider, config: ProviderConfig | None = None) -> None:
        if not isinstance(provider, Provider):
            raise ConfigError(f"provider must be a Provider (e.g. a BaseProvider), got {type(provider).__name__}")
        config = config if config is not None else ProviderConfig()
        if not isinstance(config, ProviderConfig):
            raise ConfigError(f"config must be a ProviderConfig, got {type(config).__name__}")
        if config.use_xgrammar and not provider.supports_structured_output:
            raise ConfigError(
                f"use_xgrammar=True needs a provider with structured output; {provider.name!r} has none "
                "(pass ProviderConfig(use_xgrammar=False) to extract JSON from text)"
            )
        self.provider = provider
        self.config = config
        self._tracker: ResourceTracker | None = ResourceTracker() if config.track_resources else None

    # ---- resources --------------------------------------------------------------------------
    def set_resource_tracker(self, tracker: ResourceTracker | None) -> None:
        if tracker is not None and not isinstance(tracker, ResourceTracker):
            raise ConfigError(f"tracker must be a ResourceTracker or None, got {type(tracker).__name__}")
        self._tracker = tracker

    @property
    def resource_tracker(self) -> ResourceTracker | None:
        return self._tracker

    def get_resource_usage(self) -> ResourceUsage | None:
        return self._tracker.usage if self._tracker is not None else None

    # ---- calls ------------------------------------------------------------------------------
    def uses_structured_output(self, schema: dict[str, Any] | None) -> bool:
        """Whether a call with this schema goes through ``generate_structured``."""
        return schema is not None and self.config.use_xgrammar and self.provider.supports_structured_output

    async def __call__(
        self,
        prompt: str,
        schema: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        **kw: Any,
    ) -> Any:
        """A ``dspy.Prediction``: the schema's fields, or ``text`` when there is no schema.
        Extra keyword arguments (``stop``, ``seed``, ...) go to the provider unchanged."""
        config = self.config
        max_tokens = config.max_tokens if max_tokens is None else max_tokens
        temperature = config.temperature if temperature is None else temperature
        top_p = config.top_p if top_p is None else top_p
        _checked_overrides(max_tokens, temperature, top_p)
        if schema is not None and not isinstance(schema, dict):
            raise ConfigError(f"schema must be a JSON-schema dict, got {type(schema).__name__}")
        fields = await self._generate(prompt, schema, max_tokens, temperature, top_p, kw)
        return prediction_from_dict(fields)

    async def _generate(
        self,
        prompt: str,
        schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
        top_p: float,
        kw: dict[str, Any],
    ) -> dict[str, Any]:
        tracker = self._tracker
        reservation = None
        if tracker is not None:
            prompt_tokens = self._count_prompt_tokens(prompt) if tracker.limits.max_tokens else None
            reservation = tracker.reserve(max_completion_tokens=max_tokens, prompt_tokens=prompt_tokens)
        ok = False
        with collect_usage() as collector:
            try:
                call = self._call_provider(prompt, schema, max_tokens, temperature, top_p, kw)
                remaining = tracker.remaining_wall_s() if tracker is not None else None
                if remaining is None:
                    fields = await call
                else:
                    try:
                        fields = await asyncio.wait_for(call, timeout=remaining)
                    except asyncio.TimeoutError as exc:  # not the builtin on Python 3.10
                        raise ResourceLimitExceeded(
                            f"the call ran past the wall-clock budget of {tracker.limits.max_wall_s}s",  # type: ignore[union-attr]
                            limit="max_wall_s",
                        ) from exc
                ok = True
                return fields
            finally:
                if tracker is not None and reservation is not None:
                    usage = (
                        TokenUsage(collector.prompt_tokens, collector.completion_tokens) if collector.reports else None
                    )
                    tracker.settle(reservation, usage, ok=ok)

    def _count_prompt_tokens(self, prompt: str) -> int | None:
        try:
            return self.provider.count_prompt_tokens(prompt)
        except Exception as exc:
            name = self.provider.name
            raise ProviderError(f"{name}: counting the prompt's tokens failed: {exc}", provider=name) from exc

    async def _call_provider(
        self,
        prompt: str,
        schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
        top_p: float,
        kw: dict[str, Any],
    ) -> dict[str, Any]:
        provider = self.provider
        try:
            if self.uses_structured_output(schema):
                assert schema is not None
                value = await provider.generate_structured(
                    prompt, schema, max_tokens=max_tokens, temperature=temperature, top_p=top_p, **kw
                )
                return validated(value, schema)
            text = await provider.generate_text(prompt, max_tokens, temperature, top_p=top_p, **kw)
            if not isinstance(text, str):
                raise ProviderError(
                    f"{provider.name}: generate_text returned {type(text).__name__}, not str", provider=provider.name
                )
        except (StructuredOutputError, ResourceLimitExceeded, ProviderError):
            raise
        except Exception as exc:  # any other failure of the provider, including its ConfigError
            raise ProviderError(f"{provider.name}: {type(exc).__name__}: {exc}", provider=provider.name) from exc
        if schema is None:
            return {TEXT_FIELD: text}
        return parse_structured_output(text, schema)


__all__ = ["ProviderAdapter", "ProviderConfig"]
