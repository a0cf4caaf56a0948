"""Typed errors raised by tritonlm.

Every error a user can cause derives from :class:`TritonLMError`, so callers may catch one
base class; each subclass names the kind of mistake.
"""

from __future__ import annotations


class TritonLMError(Exception):
    """Base class of every error tritonlm raises on purpose."""


class ConfigError(TritonLMError, ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""


class ModelLoadError(TritonLMError):
    """A model file is missing, truncated, corrupted or of an unsupported kind."""


class TokenizationError(TritonLMError, ValueError):
    """Text could not be tokenized, or token ids could not be decoded."""


class ContextTooLongError(TritonLMError, ValueError):
    """A prompt (plus the tokens asked for) does not fit the model's context."""


class SchemaError(TritonLMError, ValueError):
    """A JSON schema (or regex) cannot be compiled into a grammar."""


class SchemaBudgetError(SchemaError):
    """Compiling a schema or regex (or computing its token masks) went over its time or size
    budget; the message names the construct that was too large and its JSON pointer."""


class CompileCancelled(TritonLMError):
    """A compile stopped because its request was aborted (never reaches a client as an error)."""


class RequestTooLargeError(TritonLMError, ValueError):
    """A request asks for more than the engine allows one request (``n``, ``n * max_tokens``,
    prompt bytes)."""


class ConstraintViolation(TritonLMError):
    """Generated output broke its grammar (should never happen under a mask)."""


class ParseError(TritonLMError, ValueError):
    """Model output could not be parsed into the requested structure."""


class InferenceError(TritonLMError, RuntimeError):
    """A request failed while the engine was running it."""


__all__ = [
    "CompileCancelled",
    "ConfigError",
    "ConstraintViolation",
    "ContextTooLongError",
    "InferenceError",
    "ModelLoadError",
    "ParseError",
    "RequestTooLargeError",
    "SchemaBudgetError",
    "SchemaError",
    "TokenizationError",
    "TritonLMError",
]
