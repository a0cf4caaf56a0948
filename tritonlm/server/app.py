"""The OpenAI-compatible server's routes: one shared engine loop batches every HTTP client.

Endpoints: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` (SSE streaming),
``/health``, ``/metrics`` (Prometheus text). A client that disconnects aborts its request, which
frees its KV blocks. Bad requests get a 4xx with an OpenAI-style error body. The handler body
lives in :mod:`tritonlm.server.service`, the response formats in :mod:`tritonlm.server.responses`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse

from tritonlm.errors import TritonLMError
from tritonlm.runtime.llm import LLM
from tritonlm.server.errors import APIError, error_from, validation_error
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


def build_app(llm: LLM, model_name: str) -> FastAPI:
    """The FastAPI application over an existing :class:`LLM` (all clients share its engine loop)."""
    server = Server(llm, model_name)
    chat_shape, completion_shape = ChatShape(llm.tokenizer), CompletionShape(llm.tokenizer)
    app = FastAPI(title="tritonlm", version="0.1.0")
    app.state.server = server
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics_text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {
            "id": model_name,
            "object": "model",
            "created": int(server.counters.started),
            "owned_by": "tritonlm",
            "max_model_len": llm.max_model_len,
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, http: Request) -> Any:
        return await server.handle(req, chat_shape, http)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, http: Request) -> Any:
        return await server.handle(req, completion_shape, http)

    return app


def serve(llm: LLM, model_name: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the server until interrupted."""
    import uvicorn

    uvicorn.run(build_app(llm, model_name), host=host, port=port, log_level=log_level)


__all__ = ["build_app", "serve"]
