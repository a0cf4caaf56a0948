"""The errors the provider layer raises on purpose.

* :class:`ProviderError` is the one type a provider failure surfaces as (the network, the
  engine, a bad response); the original exception is its ``__cause__``.
* :class:`StructuredOutputError` means the model answered but the answer is not a JSON object
  valid under the requested schema; ``raw_text`` holds what the model said.
* :class:`ResourceLimitExceeded` means a call was refused (or stopped at the wall-clock
  budget) because it would exceed a :class:`~tritonlm.providers.resources.ResourceLimits`.
"""

from __future__ import annotations

from tritonlm.errors import ParseError, TritonLMError


class ProviderError(TritonLMError):
    """A provider call failed; ``__cause__`` is the underlying exception."""

    def __init__(self, message: str, *, provider: str | None = None) -> None:
        super().__init__(message)
        self.provider = provider


class StructuredOutputError(ParseError):
    """Model output that is not a JSON object valid under the schema; ``raw_text`` is the output,
    ``problems`` the validation messages (empty when no JSON object could be found at all)."""

    def __init__(self, message: str, *, raw_text: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.raw_text = raw_text
        self.problems = problems


class ResourceLimitExceeded(TritonLMError):
    """A call would exceed (or ran past) a resource limit; ``limit`` names which one."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


__all__ = ["ProviderError", "ResourceLimitExceeded", "StructuredOutputError"]
