"""What every HTTP request passes before a route sees it: the Host check, the API key and the
body size limit.

Both are plain ASGI middleware, so nothing is buffered: a refused request is answered before
its body is read, and a body is counted as it arrives, so a client that declares no length
(chunked) or more bytes than it declared is cut off at the limit too. ``/health`` is open (no
Host check, no key) for liveness probes; the key guards ``/v1/*`` only (``/metrics`` stays open,
as vLLM's does).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tritonlm.errors import ConfigError
from tritonlm.server.errors import APIError

DEFAULT_MAX_REQUEST_BYTES = 4 << 20
OPEN_PATHS = frozenset({"/health"})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value
    return None


def _route_path(scope: Scope) -> str:
    """The path the app routes on (without the ``root_path`` the app is mounted under)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _host_name(host: str) -> str:
    """``example.com:8000`` -> ``example.com``; ``[::1]:8000`` -> ``::1``."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def host_set(allowed_hosts: Iterable[str] | None) -> frozenset[str] | None:
    """The Host header values to serve, lower case (None: any; ``"*"`` also means any)."""
    if allowed_hosts is None:
        return None
    if isinstance(allowed_hosts, str):
        allowed_hosts = allowed_hosts.split(",")
    hosts = frozenset(h.strip().lower() for h in allowed_hosts if h.strip())
    if not hosts:
        raise ConfigError("allowed_hosts is empty: no request could be served")
    return None if "*" in hosts else hosts


def check_max_request_bytes(max_bytes: object) -> int:
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise ConfigError(f"max_request_bytes={max_bytes!r}: must be a positive integer")
    return max_bytes


class AccessGuard:
    """400 for a Host header not in ``allowed_hosts`` (None: any host), 401 for a ``/v1/*`` request
    without ``Authorization: Bearer <api_key>`` (None: no key needed)."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, allowed_hosts: frozenset[str] | None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> APIError | None:
        path = _route_path(scope)
        if path in OPEN_PATHS:
            return None
        if self.allowed_hosts is not None and not self._host_allowed(_header(scope, b"host")):
            return APIError(400, "this server does not answer for the Host header sent", code="invalid_host")
        if self.api_key is not None and (path == "/v1" or path.startswith("/v1/")):
            if not self._key_matches(_header(scope, b"authorization")):
                return APIError(
                    401,
                    "a valid API key is required: send 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return None

    def _host_allowed(self, host: bytes | None) -> bool:
        assert self.allowed_hosts is not None
        if host is None:
            return False
        full = host.decode("latin-1").strip().lower()
        return full in self.allowed_hosts or _host_name(full) in self.allowed_hosts

    def _key_matches(self, authorization: bytes | None) -> bool:
        assert self.api_key is not None
        if authorization is None:
            return False
        scheme, _, token = authorization.strip().partition(b" ")
        # compare_digest: the time taken does not depend on how much of the key matched
        return hmac.compare_digest(token.strip(), self.api_key) and scheme.lower() == b"bearer"


class BodyLimit:
    """413 for a request body over ``max_bytes``: by its Content-Length before anything is read,
    else once the bytes received pass the limit."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self) -> APIError:
        message = f"the request body is larger than this server's limit of {self.max_bytes} bytes"
        return APIError(413, message, code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self.too_large().response()(scope, receive, send)
            return
        received = 0
        exceeded = started = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # the app's answer to a body it could not read is replaced by the 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            # the framework may have wrapped _BodyTooLarge (FastAPI answers body read errors 400)
            if not exceeded:
                raise
        if exceeded and not started:
            await self.too_large().response()(scope, receive, send)


class _BodyTooLarge(Exception):
    """Raised from ``receive`` once a body passes the limit."""


__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "OPEN_PATHS",
    "AccessGuard",
    "BodyLimit",
    "check_max_request_bytes",
    "host_set",
]
