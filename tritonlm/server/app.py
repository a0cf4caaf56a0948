"""The OpenAI-compatible server's routes: one shared engine loop batches every HTTP client.

Endpoints: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` (SSE streaming),
``/health``, ``/metrics`` (Prometheus text). A client that disconnects aborts its request, which
frees its KV blocks, whether it streams or not. Bad requests get a 4xx with an OpenAI-style error
body. The handler body lives in :mod:`tritonlm.server.service`, the response formats in
:mod:`tritonlm.server.responses`, the request checks in :mod:`tritonlm.server.guards`.

Access: with ``api_key`` every ``/v1/*`` route answers 401 unless the request sends
``Authorization: Bearer <api_key>``; with ``allowed_hosts`` a request whose Host header is not
one of them answers 400. ``/health`` is exempt from both (liveness probes send neither): it says
200 ``{"status": "ok"}`` while the engine serves, else 503 with the reason. ``/metrics`` is
exempt from the key (as vLLM's is; Prometheus scrapes it unauthenticated) but not from the Host
check. A request body over ``max_request_bytes`` answers 413.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from tritonlm.errors import TritonLMError
from tritonlm.runtime.llm import LLM
from tritonlm.server.errors import APIError, error_from, validation_error
from tritonlm.server.guards import (
    DEFAULT_MAX_REQUEST_BYTES,
    AccessGuard,
    BodyLimit,
    check_max_request_bytes,
    host_set,
)
from tritonlm.server.protocol import ChatCompletionRequest, CompletionRequest
from tritonlm.server.responses import ChatShape, CompletionShape
from tritonlm.server.service import Server


def _install_error_handlers(app: FastAPI) -> None:
    """Every failure leaves as an OpenAI error body (pydantic's rejections as a 400)."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc.errors()).response()

    @app.exception_handler(TritonLMError)
    async def tritonlm_error(_: Request, exc: TritonLMError) -> JSONResponse:
        return error_from(exc).response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        # the framework's own: unknown route, wrong method, a body that could not be read
        return APIError(exc.status_code, str(exc.detail), headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        return error_from(exc).response()


def _server(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


def _install_routes(app: FastAPI) -> None:
    @app.get("/health")
    async def health(http: Request) -> JSONResponse:
        ok, reason = _server(http).health()
        if ok:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unhealthy", "reason": reason}, status_code=503)

    @app.get("/metrics")
    async def metrics(http: Request) -> PlainTextResponse:
        return PlainTextResponse(_server(http).metrics_text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(http: Request) -> dict[str, Any]:
        server = _server(http)
        card = {
            "id": server.model_name,
            "object": "model",
            "created": int(server.counters.started),
            "owned_by": "tritonlm",
            "max_model_len": server.llm.max_model_len,
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, http: Request) -> Any:
        return await _server(http).handle(req, http.app.state.shapes["chat"], http)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, http: Request) -> Any:
        return await _server(http).handle(req, http.app.state.shapes["completion"], http)


def build_app(
    llm: LLM,
    model_name: str,
    *,
    api_key: str | None = None,
    allowed_hosts: Iterable[str] | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> FastAPI:
    """The FastAPI application over an existing :class:`LLM` (all clients share its engine loop).

    ``api_key``: the Bearer token ``/v1/*`` requires (None: open). ``allowed_hosts``: the Host
    header values served, names or ``name:port`` (None or ``"*"``: any). ``max_request_bytes``:
    the largest request body accepted.
    """
    hosts = host_set(allowed_hosts)
    max_bytes = check_max_request_bytes(max_request_bytes)
    app = FastAPI(title="tritonlm", version="0.1.0")
    # The routes find what they serve on the app, not in closures: FastAPI keeps every endpoint
    # function in module-level caches, so a closure over the LLM would keep its model alive for
    # the life of the process after this app is gone.
    app.state.server = Server(llm, model_name)
    app.state.shapes = {"chat": ChatShape(llm.tokenizer), "completion": CompletionShape(llm.tokenizer)}
    _install_error_handlers(app)
    # the last added runs first: the Host and key checks answer before any body byte is read
    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    app.add_middleware(AccessGuard, api_key=api_key, allowed_hosts=hosts)
    _install_routes(app)
    return app


def serve(
    llm: LLM,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    *,
    api_key: str | None = None,
    allowed_hosts: Iterable[str] | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> None:
    """Run the server until interrupted (options: :func:`build_app`)."""
    import uvicorn

    app = build_app(llm, model_name, api_key=api_key, allowed_hosts=allowed_hosts, max_request_bytes=max_request_bytes)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["build_app", "serve"]
