"""The OpenAI-compatible server: one shared engine loop batches every HTTP client.

Endpoints: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` (SSE streaming),
``/health``, ``/metrics`` (Prometheus text). A client that disconnects aborts its request, which
frees its KV blocks. Bad requests get a 4xx with an OpenAI-style error body.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from tritonlm.errors import (
    ConfigError,
    ContextTooLongError,
    SchemaError,
    TokenizationError,
    TritonLMError,
)
from tritonlm.runtime.llm import LLM, AsyncLLM
from tritonlm.runtime.outputs import RequestOutput, StreamDelta
from tritonlm.runtime.sampling_params import SamplingParams
from tritonlm.server.protocol import ChatCompletionRequest, CompletionRequest

# errors caused by the request itself: 400, the server keeps serving
_CLIENT_ERRORS = (ConfigError, ContextTooLongError, SchemaError, TokenizationError)


class APIError(Exception):
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
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def _error_from(exc: BaseException) -> APIError:
    if isinstance(exc, ContextTooLongError):
        return APIError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, SchemaError):
        return APIError(400, str(exc), code="invalid_schema", param="response_format")
    if isinstance(exc, _CLIENT_ERRORS):
        return APIError(400, str(exc), code="invalid_request")
    return APIError(500, f"{type(exc).__name__}: {exc}", type_="server_error", code="internal_error")


@dataclass
class _Counters:
    requests_ok: int = 0
    requests_failed: int = 0
    requests_aborted: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.time)


class Server:
    """State shared by the handlers: the engine and the counters behind /metrics."""

    def __init__(self, llm: LLM, model_name: str) -> None:
        self.llm = llm
        self.async_llm = AsyncLLM.from_llm(llm)
        self.model_name = model_name
        self.counters = _Counters()

    # ---- request translation --------------------------------------------------------------
    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(
                404,
                f"the model '{name}' does not exist; this server has '{self.model_name}'",
                code="model_not_found",
                param="model",
            )

    def sampling_params(
        self, req: CompletionRequest | ChatCompletionRequest, max_tokens: int | None, logprobs: int | None
    ) -> SamplingParams:
        max_model_len = self.llm.engine.max_model_len
        constraint: dict[str, Any] = {}
        fmt = req.response_format
        if fmt is not None:
            kind = fmt.get("type")
            if kind == "json_schema":
                spec = fmt.get("json_schema") or {}
                schema = spec.get("schema")
                if not isinstance(schema, (dict, bool)):
                    raise APIError(
                        400, "response_format.json_schema.schema must be a JSON schema object", param="response_format"
                    )
                constraint["json_schema"] = schema
            elif kind == "json_object":
                constraint["json_schema"] = {"type": "object"}
            elif kind not in (None, "text"):
                raise APIError(400, f"response_format.type={kind!r} is not supported", param="response_format")
        if max_tokens is not None and max_tokens >= max_model_len:
            raise APIError(
                400,
                f"max_tokens={max_tokens} does not fit this model's context of {max_model_len} "
                "tokens (prompt included)",
                code="context_length_exceeded",
                param="max_tokens",
            )
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        try:
            return SamplingParams(
                n=req.n,
                max_tokens=max_tokens or 256,
                temperature=req.temperature,
                top_p=req.top_p,
                top_k=req.top_k,
                min_p=req.min_p,
                presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty,
                repetition_penalty=req.repetition_penalty,
                seed=req.seed,
                stop=tuple(stop),
                ignore_eos=req.ignore_eos,
                logprobs=logprobs,
                **constraint,
            )
        except ConfigError as exc:
            raise APIError(400, str(exc)) from exc

    # ---- generation -----------------------------------------------------------------------
    async def start(self, prompt: Any, params: SamplingParams) -> tuple[AsyncIterator[StreamDelta], StreamDelta]:
        """Submit and wait for the first delta, so a bad request fails before any response is sent."""
        request_id = f"{uuid.uuid4().hex[:24]}"
        stream = self.async_llm.generate(prompt, params, request_id=request_id)
        first = await stream.__anext__()
        if first.finished and first.output is not None and first.output.error is not None:
            await stream.aclose()
            self.counters.requests_failed += 1
            raise _error_from(first.output.error)
        return stream, first

    def account(self, output: RequestOutput | None) -> None:
        if output is None:
            self.counters.requests_aborted += 1
            return
        if output.error is not None:
            self.counters.requests_failed += 1
        elif any(c.finish_reason == "abort" for c in output.outputs):
            self.counters.requests_aborted += 1
        else:
            self.counters.requests_ok += 1
        self.counters.prompt_tokens += output.usage.prompt_tokens
        self.counters.cached_prompt_tokens += output.usage.cached_prompt_tokens
        self.counters.completion_tokens += output.usage.completion_tokens

    async def run_to_end(self, prompt: Any, params: SamplingParams) -> RequestOutput:
        stream, delta = await self.start(prompt, params)
        async for delta in stream:  # noqa: B007
            pass
        output = delta.output
        self.account(output)
        assert output is not None
        if output.error is not None:
            raise _error_from(output.error)
        return output

    async def sse_events(
        self,
        stream: AsyncIterator[StreamDelta],
        first: StreamDelta,
        http: Request,
        *,
        head: list[bytes],
        text_chunk: Callable[[int, str], bytes],
        final_chunks: Callable[[RequestOutput], list[bytes]],
    ) -> AsyncIterator[bytes]:
        """The SSE body of a streamed request: ``head``, a chunk per text delta, the final chunks
        and ``[DONE]``. Stops early when the client has gone; closing ``stream`` then aborts
        the request, which frees its KV blocks."""
        output = None
        try:
            for event in head:
                yield event
            pending = [first]
            while True:
                for delta in pending:
                    if delta.text:
                        yield text_chunk(delta.index, delta.text)
                    if delta.finished:
                        output = delta.output
                if output is not None or await http.is_disconnected():
                    break
                try:
                    pending = [await stream.__anext__()]
                except StopAsyncIteration:
                    break
            if output is not None:
                if output.error is not None:
                    err = _error_from(output.error)
                    yield _sse({"error": {"message": err.message, "type": err.type, "code": err.code}})
                else:
                    for event in final_chunks(output):
                        yield event
                yield _sse("[DONE]")
        finally:
            await stream.aclose()
            self.account(output)

    # ---- metrics ---------------------------------------------------------------------------
    def metrics(self) -> str:
        engine = self.llm.engine
        bm = engine.block_manager
        sched = engine.scheduler
        c = self.counters
        batch_sizes = engine.stats.batch_sizes
        hit_rate = c.cached_prompt_tokens / c.prompt_tokens if c.prompt_tokens else 0.0
        lines = [
            (
                "tritonlm_requests_total",
                "counter",
                "Finished requests by status",
                [
                    ('{status="ok"}', c.requests_ok),
                    ('{status="error"}', c.requests_failed),
                    ('{status="aborted"}', c.requests_aborted),
                ],
            ),
            ("tritonlm_prompt_tokens_total", "counter", "Prompt tokens processed", [("", c.prompt_tokens)]),
            ("tritonlm_completion_tokens_total", "counter", "Completion tokens generated", [("", c.completion_tokens)]),
            ("tritonlm_requests_running", "gauge", "Requests in the running batch", [("", len(sched.running))]),
            ("tritonlm_requests_waiting", "gauge", "Requests waiting to be scheduled", [("", len(sched.waiting))]),
            (
                "tritonlm_batch_size",
                "gauge",
                "Requests in the last engine step",
                [("", batch_sizes[-1] if batch_sizes else 0)],
            ),
            ("tritonlm_engine_steps_total", "counter", "Engine steps run", [("", engine.stats.num_steps)]),
            ("tritonlm_kv_blocks_total", "gauge", "KV cache blocks", [("", bm.num_blocks)]),
            (
                "tritonlm_kv_blocks_used",
                "gauge",
                "KV cache blocks referenced by requests",
                [("", bm.num_blocks - bm.num_free_blocks)],
            ),
            (
                "tritonlm_prefix_cache_hit_blocks_total",
                "counter",
                "Prompt blocks served from the prefix cache",
                [("", bm.num_cache_hit_blocks)],
            ),
            (
                "tritonlm_prefix_cache_hit_rate",
                "gauge",
                "Prompt tokens served from the prefix cache / prompt tokens",
                [("", hit_rate)],
            ),
        ]
        out = []
        for name, kind, help_text, samples in lines:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {value}" for labels, value in samples)
        return "\n".join(out) + "\n"


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def _usage(output: RequestOutput) -> dict[str, int]:
    u = output.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def _chat_logprobs(tokenizer: Any, logprobs: list[Any] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        raw = tokenizer.token_bytes[token_id]
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return {
        "content": [
            {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, p) for t, p in lp.top]} for lp in logprobs
        ]
    }


def _completion_logprobs(tokenizer: Any, logprobs: list[Any] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    tokens = [tokenizer.token_bytes[lp.token_id].decode("utf-8", errors="replace") for lp in logprobs]
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [
            {tokenizer.token_bytes[t].decode("utf-8", errors="replace"): p for t, p in lp.top} for lp in logprobs
        ],
        "text_offset": [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))],
    }


def build_app(llm: LLM, model_name: str) -> FastAPI:
    """The FastAPI application over an existing :class:`LLM` (all clients share its engine loop)."""
    server = Server(llm, model_name)
    app = FastAPI(title="tritonlm", version="0.1.0")
    app.state.server = server
    tokenizer = llm.tokenizer

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors)
        return APIError(400, message or "invalid request body", param=param).response()

    @app.exception_handler(TritonLMError)
    async def _tritonlm_error(_: Request, exc: TritonLMError) -> JSONResponse:
        return _error_from(exc).response()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": int(server.counters.started),
                    "owned_by": "tritonlm",
                    "max_model_len": llm.engine.max_model_len,
                }
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, http: Request) -> Any:
        server.check_model(req.model)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        for m in messages:  # content parts -> plain text (text parts only)
            if isinstance(m.get("content"), list):
                m["content"] = "".join(p.get("text", "") for p in m["content"] if p.get("type") == "text")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = server.sampling_params(req, req.max_completion_tokens or req.max_tokens, logprobs)
        created = int(time.time())
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if not req.stream:
            output = await server.run_to_end(messages, params)
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "choices": [
                    {
                        "index": c.index,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": _chat_logprobs(tokenizer, c.logprobs),
                        "finish_reason": c.finish_reason,
                    }
                    for c in output.outputs
                ],
                "usage": _usage(output),
            }
        stream, first = await server.start(messages, params)
        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
            return _sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model_name,
                    "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
                }
            )

        def final(output: RequestOutput) -> list[bytes]:
            events = [
                chunk(
                    c.index,
                    {},
                    c.finish_reason,
                    _chat_logprobs(tokenizer, c.logprobs) if c.logprobs is not None else None,
                )
                for c in output.outputs
            ]
            if include_usage:
                events.append(
                    _sse(
                        {
                            "id": completion_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model_name,
                            "choices": [],
                            "usage": _usage(output),
                        }
                    )
                )
            return events

        events = server.sse_events(
            stream,
            first,
            http,
            head=[chunk(i, {"role": "assistant", "content": ""}) for i in range(params.n)],
            text_chunk=lambda index, text: chunk(index, {"content": text}),
            final_chunks=final,
        )
        return StreamingResponse(events, media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, http: Request) -> Any:
        server.check_model(req.model)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise APIError(
                    400, "batched prompts are not supported in one request; send one prompt per request", param="prompt"
                )
            prompt = prompt[0]
        if isinstance(prompt, list) and not prompt:
            raise APIError(400, "the prompt is empty", param="prompt")
        params = server.sampling_params(req, req.max_tokens, req.logprobs)
        created = int(time.time())
        completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
        if not req.stream:
            output = await server.run_to_end(prompt, params)
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model_name,
                "choices": [
                    {
                        "index": c.index,
                        "text": c.text,
                        "logprobs": _completion_logprobs(tokenizer, c.logprobs),
                        "finish_reason": c.finish_reason,
                    }
                    for c in output.outputs
                ],
                "usage": _usage(output),
            }
        stream, first = await server.start(prompt, params)
        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def chunk(index: int, text: str, finish: str | None = None) -> bytes:
            return _sse(
                {
                    "id": completion_id,
                    "object": "text_completion",
                    "created": created,
                    "model": model_name,
                    "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}],
                }
            )

        def final(output: RequestOutput) -> list[bytes]:
            events = [chunk(c.index, "", c.finish_reason) for c in output.outputs]
            if include_usage:
                events.append(
                    _sse(
                        {
                            "id": completion_id,
                            "object": "text_completion",
                            "created": created,
                            "model": model_name,
                            "choices": [],
                            "usage": _usage(output),
                        }
                    )
                )
            return events

        events = server.sse_events(stream, first, http, head=[], text_chunk=chunk, final_chunks=final)
        return StreamingResponse(events, media_type="text/event-stream")

    return app


def serve(llm: LLM, model_name: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the server until interrupted."""
    import uvicorn

    uvicorn.run(build_app(llm, model_name), host=host, port=port, log_level=log_level)
