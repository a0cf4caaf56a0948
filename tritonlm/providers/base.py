"""The provider interface: an async text / stream / structured-output generator.

:class:`Provider` is the seam :class:`~tritonlm.providers.ProviderAdapter` depends on (a
``Protocol``: any object with these members is a provider); :class:`BaseProvider` is the
convenient base class implementing its plumbing.

A provider reports the real token usage of every generation it runs through
:meth:`BaseProvider.report_usage`. The report goes to whatever collector the caller installed
with :func:`collect_usage` in the current context (``contextvars``), so concurrent calls from
``asyncio.gather`` each see only their own usage.
"""

from __future__ import annotations

import contextlib
import contextvars
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from tritonlm.errors import ConfigError


@dataclass(frozen=True)
class ProviderCapabilities:
    """What a provider can do beyond plain text generation."""

    streaming: bool = False
    structured_output: bool = False
    reasoning: bool = False

    def __post_init__(self) -> None:
        for name in ("streaming", "structured_output", "reasoning"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"ProviderCapabilities.{name} must be a bool, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class TokenUsage:
    """Token counts of one generation, as the engine or the server counted them."""

    prompt_tokens: int
    completion_tokens: int

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "completion_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"TokenUsage.{name} must be an integer >= 0, got {value!r}")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class UsageCollector:
    """Receives the usage reports of the generations run inside one :func:`collect_usage` block."""

    reports: list[TokenUsage] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.reports)

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.reports)


_CURRENT_COLLECTOR: contextvars.ContextVar[UsageCollector | None] = contextvars.ContextVar(
    "tritonlm_provider_usage_collector", default=None
)


def report_usage(prompt_tokens: int, completion_tokens: int) -> None:
    """Record the real token usage of one generation for the caller's collector, if any."""
    collector = _CURRENT_COLLECTOR.get()
    if collector is not None:
        collector.reports.append(TokenUsage(prompt_tokens, completion_tokens))


@contextlib.contextmanager
def collect_usage() -> Iterator[UsageCollector]:
    """Collect the usage the providers report inside the block (this context only)."""
    collector = UsageCollector()
    token = _CURRENT_COLLECTOR.set(collector)
    try:
        yield collector
    finally:
        _CURRENT_COLLECTOR.reset(token)


@runtime_checkable
class Provider(Protocol):
    """What the adapter needs from a provider. Every generation reports its real usage with
    :func:`report_usage`; ``count_prompt_tokens`` returns None when it cannot tell cheaply."""

    name: str
    capabilities: ProviderCapabilities

    @property
    def supports_structured_output(self) -> bool: ...

    async def generate_text(self, prompt: str, max_tokens: int = ..., temperature: float = ..., **kw: Any) -> str: ...

    def generate_stream(self, prompt: str, **kw: Any) -> AsyncIterator[str]: ...

    async def generate_structured(self, prompt: str, schema: dict[str, Any], **kw: Any) -> dict[str, Any]: ...

    async def check_health(self) -> bool: ...

    def count_prompt_tokens(self, prompt: str) -> int | None: ...


class BaseProvider(ABC):
    """An async generator of text, text streams and schema-shaped dicts.

    Subclasses implement the four generation methods and ``check_health``; ``initialize`` is
    for set-up that needs credentials or I/O (the default does nothing). Every generation
    should call :meth:`report_usage` with the real token counts once it knows them.
    """

    def __init__(self, name: str, capabilities: ProviderCapabilities) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError("a provider needs a non-empty name")
        if not isinstance(capabilities, ProviderCapabilities):
            raise ConfigError(f"capabilities must be ProviderCapabilities, got {type(capabilities).__name__}")
        self.name = name
        self.capabilities = capabilities

    async def initialize(self, credentials: dict[str, Any] | None = None) -> None:  # noqa: B027 - optional hook
        """Prepare the provider (connect, authenticate). Idempotent."""

    @abstractmethod
    async def generate_text(self, prompt: str, max_tokens: int = 2048, temperature: float = 0.3, **kw: Any) -> str:
        """The completion of ``prompt`` as text."""

    @abstractmethod
    def generate_stream(self, prompt: str, **kw: Any) -> AsyncIterator[str]:
        """The completion of ``prompt`` as text deltas (an async generator)."""

    @abstractmethod
    async def generate_structured(self, prompt: str, schema: dict[str, Any], **kw: Any) -> dict[str, Any]:
        """A JSON object valid under ``schema``."""

    @abstractmethod
    async def check_health(self) -> bool:
        """True when the provider can serve a request now; never raises."""

    def count_prompt_tokens(self, prompt: str) -> int | None:
        """The prompt's token count as the provider will send it, when it can tell cheaply
        (resource limits reserve it before the call); None when it cannot."""
        return None

    @property
    def supports_streaming(self) -> bool:
        return self.capabilities.streaming

    @property
    def supports_structured_output(self) -> bool:
        return self.capabilities.structured_output

    @staticmethod
    def report_usage(prompt_tokens: int, completion_tokens: int) -> None:
        """Record the real token usage of one generation (:func:`report_usage`)."""
        report_usage(prompt_tokens, completion_tokens)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, capabilities={self.capabilities!r})"


__all__ = [
    "BaseProvider",
    "Provider",
    "ProviderCapabilities",
    "TokenUsage",
    "UsageCollector",
    "collect_usage",
    "report_usage",
]
