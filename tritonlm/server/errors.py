"""OpenAI-style error bodies: :class:`APIError` and the mapping from tritonlm's exceptions.

Errors caused by the request itself (bad schema, context too long, bad sampling settings, a
request over the engine's caps) are 4xx and the server keeps serving; anything else is a 500
``server_error``. A request whose client has gone is answered 499 (nobody reads it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse

from tritonlm.errors import (
    CompileCancelled,
    ConfigError,
    ContextTooLongError,
    RequestTooLargeError,
    SchemaBudgetError,
    SchemaError,
    TokenizationError,
)

CLIENT_ERRORS = (ConfigError, ContextTooLongError, SchemaError, TokenizationError, RequestTooLargeError)
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left before the answer


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
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers

    def body(self) -> dict[str, Any]:
        # a lone surrogate in an echoed value would make the body unencodable (a 500 instead)
        message = self.message.encode("utf-8", "replace").decode()
        return {"error": {"message": message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def client_closed() -> APIError:
    """The answer to a request whose client disconnected (its generation was aborted)."""
    return APIError(CLIENT_CLOSED_REQUEST, "the client closed the request", code="client_closed_request")


def error_from(exc: BaseException, prompt_param: str = "messages") -> APIError:
    """The API error reporting ``exc`` (an engine or request failure); ``prompt_param`` names the
    request's prompt field (``messages`` or ``prompt``) for errors about the prompt."""
    if isinstance(exc, ContextTooLongError):
        return APIError(400, str(exc), code="context_length_exceeded", param=prompt_param)
    if isinstance(exc, SchemaBudgetError):
        return APIError(400, str(exc), code="schema_too_complex", param="response_format")
    if isinstance(exc, SchemaError):
        return APIError(400, str(exc), code="invalid_schema", param="response_format")
    if isinstance(exc, RequestTooLargeError):
        return APIError(400, str(exc), code="request_too_large", param=_too_large_param(exc))
    if isinstance(exc, TokenizationError):
        return APIError(400, str(exc), code="invalid_request", param=prompt_param)
    if isinstance(exc, CLIENT_ERRORS):
        return APIError(400, str(exc), code="invalid_request")
    if isinstance(exc, CompileCancelled):  # only an aborted request's compile stops this way
        return client_closed()
    return APIError(500, f"{type(exc).__name__}: {exc}", type_="server_error", code="internal_error")


def _too_large_param(exc: RequestTooLargeError) -> str | None:
    """The field a :class:`RequestTooLargeError` is about: its ``param`` if it has one, else the
    field its message leads with (``"n=..."``, ``"n * max_tokens = ..."``, ``"prompt ..."``)."""
    param = getattr(exc, "param", None)
    if isinstance(param, str):
        return param
    message = str(exc)
    if "max_tokens" in message:
        return "max_tokens"
    for name in ("n", "prompt", "messages"):
        if re.match(rf"{name}\b", message):
            return name
    return None


# pydantic names the member of a union a value failed in its error location ("str", "list[int]")
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and (part in _UNION_TAGS or not part.isidentifier())


def field_path(loc: Sequence[Any]) -> str | None:
    """``("messages", 0, "content")`` as ``messages[0].content`` (None for the empty path)."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or None


def validation_error(errors: Sequence[Any]) -> APIError:
    """The 400 for a request body pydantic rejected (``RequestValidationError.errors()``), its
    ``param`` the first field at fault."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":  # its location is ("body", offset)
        detail = (first.get("ctx") or {}).get("error", "")
        return APIError(400, f"the request body is not valid JSON: {detail}".rstrip(": "), code="invalid_json")
    # FastAPI's locations start with "body"
    paths = [field_path([p for p in e.get("loc", ())[1:] if not _is_union_tag(p)]) for e in errors]
    lines = dict.fromkeys(f"{path or 'body'}: {e.get('msg')}" for path, e in zip(paths, errors, strict=True))
    return APIError(400, "; ".join(lines) or "invalid request body", param=paths[0] if paths else None)


__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "CLIENT_ERRORS",
    "APIError",
    "client_closed",
    "error_from",
    "field_path",
    "validation_error",
]
