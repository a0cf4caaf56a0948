"""OpenAI-style error bodies: :class:`APIError` and the mapping from tritonlm's exceptions.

Errors caused by the request itself (bad schema, context too long, bad sampling settings) are
4xx and the server keeps serving; anything else is a 500 ``server_error``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse

from tritonlm.errors import ConfigError, ContextTooLongError, SchemaError, TokenizationError

CLIENT_ERRORS = (ConfigError, ContextTooLongError, SchemaError, TokenizationError)


class APIError(Exception):
    """An HTTP error with the OpenAI error body ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def error_from(exc: BaseException) -> APIError:
    """The API error reporting ``exc`` (an engine or request failure)."""
    if isinstance(exc, ContextTooLongError):
        return APIError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, SchemaError):
        return APIError(400, str(exc), code="invalid_schema", param="response_format")
    if isinstance(exc, CLIENT_ERRORS):
        return APIError(400, str(exc), code="invalid_request")
    return APIError(500, f"{type(exc).__name__}: {exc}", type_="server_error", code="internal_error")


def validation_error(errors: Sequence[Any]) -> APIError:
    """The 400 for a request body pydantic rejected (``RequestValidationError.errors()``)."""
    first = errors[0] if errors else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors)
    return APIError(400, message or "invalid request body", param=param)


__all__ = ["CLIENT_ERRORS", "APIError", "error_from", "validation_error"]
