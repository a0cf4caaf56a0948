"""The server against hostile or careless clients: API key, Host check, body limit, clients that
disconnect from non-streamed requests, and client mistakes that must be a 4xx naming the field."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.server.support import running_app, tiny_llm
from tritonlm.errors import CompileCancelled, ConfigError, RequestTooLargeError, SchemaBudgetError, SchemaError
from tritonlm.runtime.config import RequestLimits
from tritonlm.runtime.llm import LLM
from tritonlm.runtime.sampling_params import SamplingParams
from tritonlm.server import build_app
from tritonlm.server.errors import error_from
from tritonlm.server.guards import DEFAULT_MAX_REQUEST_BYTES, check_max_request_bytes, host_set
from tritonlm.server.service import ClientDisconnected, unless_disconnected

openai = pytest.importorskip("openai")
MODEL = "tiny-qwen"
KEY = "sk-test-0123456789"
MAX_N, MAX_REQUEST_TOKENS = 4, 2000
LIMITS = RequestLimits(max_n=MAX_N, max_request_tokens=MAX_REQUEST_TOKENS)
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture(scope="module")
def llm(qwen_tokenizer) -> Iterator[LLM]:
    llm = tiny_llm(qwen_tokenizer, max_num_seqs=64, num_kv_blocks=1024, max_model_len=1024, limits=LIMITS)
    llm.generate(["warm up"], SamplingParams(max_tokens=1))  # the first step is slow (one-time set-up)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def server(llm: LLM) -> Iterator[str]:
    """No key, no Host check, the default body limit."""
    with running_app(build_app(llm, MODEL)) as url:
        yield url


@pytest.fixture(scope="module")
def guarded(llm: LLM) -> Iterator[str]:
    """A key, a Host check and a 2 KiB body limit."""
    app = build_app(llm, MODEL, api_key=KEY, allowed_hosts=["api.example.com", "127.0.0.1"], max_request_bytes=2048)
    with running_app(app) as url:
        yield url


def _error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"] and body["error"]["type"], body
    return body["error"]


def _chat(content: object, **fields: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **fields}


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# ---- API key ------------------------------------------------------------------------------------
def test_api_key_guards_every_v1_route(guarded: str) -> None:
    good = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    for headers in ({}, _auth("wrong"), _auth(KEY + "x"), {"authorization": f"Basic {KEY}"}, {"authorization": KEY}):
        for method, path in (("GET", "/v1/models"), ("POST", COMPLETIONS), ("POST", CHAT), ("GET", "/v1/nope")):
            r = httpx.request(method, guarded + path, json=good if method == "POST" else None, headers=headers)
            assert r.status_code == 401, (headers, path, r.text)
            err = _error(r)
            assert err["type"] == "invalid_request_error" and err["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
            assert KEY not in r.text
    assert httpx.get(guarded + "/v1/models", headers=_auth(KEY)).status_code == 200
    assert httpx.get(guarded + "/v1/models", headers={"authorization": f"bearer  {KEY}"}).status_code == 200
    r = httpx.post(guarded + COMPLETIONS, json=good, headers=_auth(KEY))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    # liveness probes and Prometheus need no key
    assert httpx.get(guarded + "/health").json() == {"status": "ok"}
    assert httpx.get(guarded + "/metrics").status_code == 200


def test_openai_client_with_api_key(guarded: str) -> None:
    client = openai.OpenAI(base_url=guarded + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert resp.usage.completion_tokens <= 3
    stream = client.completions.create(model=MODEL, prompt="hi", max_tokens=3, stream=True)
    assert sum(1 for _ in stream) >= 1
    wrong = openai.OpenAI(base_url=guarded + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.models.list()
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"


def test_unauthenticated_body_is_refused_unread(guarded: str) -> None:
    r = httpx.post(guarded + COMPLETIONS, content=b"x" * (1 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 401


# ---- Host check ---------------------------------------------------------------------------------
def test_host_check(guarded: str) -> None:
    port = guarded.rsplit(":", 1)[1]
    for host in ("evil.example.com", "api.example.com.evil.org", "localhost", f"evil.example.com:{port}"):
        r = httpx.get(guarded + "/v1/models", headers={"host": host, **_auth(KEY)})
        assert r.status_code == 400, (host, r.text)
        assert _error(r)["code"] == "invalid_host"
        assert httpx.get(guarded + "/metrics", headers={"host": host}).status_code == 400
        # a probe may send any Host
        assert httpx.get(guarded + "/health", headers={"host": host}).status_code == 200
    for host in ("api.example.com", "API.example.com", f"api.example.com:{port}", f"127.0.0.1:{port}"):
        r = httpx.get(guarded + "/v1/models", headers={"host": host, **_auth(KEY)})
        assert r.status_code == 200, (host, r.text)


def test_host_names_and_options() -> None:
    assert host_set(None) is None and host_set(["*"]) is None and host_set("a, B:80") == {"a", "b:80"}
    for bad in ("", " , ", []):
        with pytest.raises(ConfigError):
            host_set(bad)
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ConfigError):
            check_max_request_bytes(bad)
    assert DEFAULT_MAX_REQUEST_BYTES == 4 << 20


# ---- body limit ---------------------------------------------------------------------------------
def _assert_too_large(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    err = _error(r)
    assert err == {
        "message": err["message"],
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }


def test_body_limit_by_content_length_and_while_reading(guarded: str) -> None:
    body = json.dumps({"model": MODEL, "prompt": "x" * 4000, "max_tokens": 2}).encode()
    headers = {"content-type": "application/json", **_auth(KEY)}
    _assert_too_large(httpx.post(guarded + COMPLETIONS, content=body, headers=headers))

    def chunks(data: bytes) -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for i in range(0, len(data), 512):
            yield data[i : i + 512]

    r = httpx.post(guarded + COMPLETIONS, content=chunks(body), headers=headers)
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    _assert_too_large(r)
    small = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2}).encode()
    assert httpx.post(guarded + COMPLETIONS, content=chunks(small), headers=headers).status_code == 200
    assert httpx.post(guarded + COMPLETIONS, content=small, headers=headers).status_code == 200


def test_default_body_limit_refuses_a_50_mb_prompt(server: str) -> None:
    body = b'{"model": "' + MODEL.encode() + b'", "prompt": "' + b"a" * (50 << 20) + b'"}'
    _assert_too_large(httpx.post(server + COMPLETIONS, content=body, headers={"content-type": "application/json"}))
    assert httpx.get(server + "/health").status_code == 200


# ---- disconnects --------------------------------------------------------------------------------
def test_non_streaming_clients_that_disconnect_abort_their_requests(server: str, llm: LLM) -> None:
    n_clients, n = 8, 4

    async def run() -> float:
        async with httpx.AsyncClient(base_url=server, timeout=120) as http:
            body = {"model": MODEL, "max_tokens": MAX_REQUEST_TOKENS // n, "n": n, "ignore_eos": True}
            tasks = [
                asyncio.create_task(http.post(COMPLETIONS, json={**body, "prompt": f"story {i}"})) for i in range(8)
            ]
            deadline = time.monotonic() + 30
            while llm.metrics().num_requests_running < n_clients * n:
                assert time.monotonic() < deadline, llm.metrics()
                assert not any(t.done() for t in tasks), [t.result().text for t in tasks if t.done()]
                await asyncio.sleep(0.02)
            for t in tasks:  # cancelling an httpx request closes its connection
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            gone = time.monotonic()
            while True:
                m = llm.metrics()
                if m.num_requests_running == m.num_requests_waiting == m.num_kv_blocks_used == 0:
                    return time.monotonic() - gone
                assert time.monotonic() - gone < 10, m
                await asyncio.sleep(0.01)

    aborted_before = _aborted(server)
    released_after = asyncio.run(run())
    assert released_after < 1.0, f"the engine released the requests {released_after:.2f} s after the clients left"
    assert _aborted(server) - aborted_before == n_clients
    r = httpx.post(server + COMPLETIONS, json={"model": MODEL, "prompt": "still here?", "max_tokens": 2})
    assert r.status_code == 200


def test_waiting_work_is_cancelled_when_the_client_disconnects() -> None:
    class Connection:  # what unless_disconnected reads of a Starlette Request
        def __init__(self) -> None:
            self.gone = asyncio.Event()

        async def receive(self) -> dict:
            await self.gone.wait()
            return {"type": "http.disconnect"}

    async def run() -> None:
        http = Connection()
        cancelled = asyncio.Event()

        async def work(seconds: float) -> str:
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "done"

        assert await unless_disconnected(http, work(0)) == "done"  # type: ignore[arg-type]
        asyncio.get_running_loop().call_later(0.05, http.gone.set)
        with pytest.raises(ClientDisconnected):
            await unless_disconnected(http, work(60))  # type: ignore[arg-type]
        assert cancelled.is_set()

    asyncio.run(asyncio.wait_for(run(), 10))


def _aborted(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith('tritonlm_requests_total{status="aborted"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no aborted counter")


# ---- client mistakes ----------------------------------------------------------------------------
def _nested_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def _json_schema(schema: object) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


# (name, path, body: JSON value or raw bytes, status, param)
MISTAKES: list[tuple[str, str, object, int, str | None]] = [
    ("part text a number", CHAT, _chat([{"type": "text", "text": 5}]), 400, "messages[0].content[0].text"),
    ("part text null", CHAT, _chat([{"type": "text", "text": None}]), 400, "messages[0].content[0].text"),
    ("part text missing", CHAT, _chat([{"type": "text"}]), 400, "messages[0].content[0].text"),
    ("part not an object", CHAT, _chat(["hi"]), 400, "messages[0].content[0]"),
    ("part without a type", CHAT, _chat([{"text": "hi"}]), 400, "messages[0].content[0].type"),
    ("content a number", CHAT, _chat(5), 400, "messages[0].content"),
    ("content an object", CHAT, _chat({"text": "hi"}), 400, "messages[0].content"),
    ("role unknown", CHAT, {"model": MODEL, "messages": [{"role": "god", "content": "x"}]}, 400, "messages[0].role"),
    ("messages a string", CHAT, {"model": MODEL, "messages": "hi"}, 400, "messages"),
    ("messages empty", CHAT, {"model": MODEL, "messages": []}, 400, "messages"),
    ("no model", CHAT, {"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
    ("unknown model", CHAT, {**_chat("x"), "model": "nope"}, 404, "model"),
    # json.dumps writes a lone surrogate as the JSON escape "\\ud800"
    ("surrogate in content", CHAT, _chat("a\ud800"), 400, "messages[0].content"),
    ("surrogate in a part", CHAT, _chat([{"type": "text", "text": "\udfff"}]), 400, "messages[0].content[0].text"),
    ("surrogate in the prompt", COMPLETIONS, {"model": MODEL, "prompt": "x\ud800y"}, 400, "prompt"),
    ("surrogate in a prompt list", COMPLETIONS, {"model": MODEL, "prompt": ["\ud800"]}, 400, "prompt[0]"),
    ("surrogate in stop", COMPLETIONS, {"model": MODEL, "prompt": "x", "stop": ["\ud83d"]}, 400, "stop[0]"),
    ("surrogate in the model", COMPLETIONS, {"model": "\ud800", "prompt": "x"}, 400, "model"),
    ("surrogate in a key", COMPLETIONS, {"model": MODEL, "prompt": "x", "\ud800": 1}, 400, None),
    (
        "surrogate in a schema",
        CHAT,
        _chat("x", response_format=_json_schema({"enum": ["\ud800"]})),
        400,
        "response_format.json_schema.schema.enum[0]",
    ),
    ("n over the cap", COMPLETIONS, {"model": MODEL, "prompt": "x", "n": MAX_N + 1, "max_tokens": 2}, 400, "n"),
    (
        "n * max_tokens over the cap",
        COMPLETIONS,
        {"model": MODEL, "prompt": "x", "n": MAX_N, "max_tokens": MAX_REQUEST_TOKENS // MAX_N + 1},
        400,
        "max_tokens",
    ),
    ("n zero", COMPLETIONS, {"model": MODEL, "prompt": "x", "n": 0}, 400, "n"),
    ("n a string", COMPLETIONS, {"model": MODEL, "prompt": "x", "n": "many"}, 400, "n"),
    (
        "max_tokens past the context",
        COMPLETIONS,
        {"model": MODEL, "prompt": "x", "max_tokens": 10**30},
        400,
        "max_tokens",
    ),
    ("max_tokens zero", COMPLETIONS, {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("temperature a word", COMPLETIONS, {"model": MODEL, "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("logprobs too many", COMPLETIONS, {"model": MODEL, "prompt": "x", "logprobs": 1000}, 400, "logprobs"),
    ("stop numbers", COMPLETIONS, {"model": MODEL, "prompt": "x", "stop": [1, 2]}, 400, "stop"),
    ("prompt a number", COMPLETIONS, {"model": MODEL, "prompt": 5}, 400, "prompt"),
    ("prompt mixed ids", COMPLETIONS, {"model": MODEL, "prompt": [[1, "a"]]}, 400, "prompt"),
    ("prompt empty", COMPLETIONS, {"model": MODEL, "prompt": []}, 400, "prompt"),
    ("token id past the vocabulary", COMPLETIONS, {"model": MODEL, "prompt": [10**9]}, 400, "prompt"),
    ("token id negative", COMPLETIONS, {"model": MODEL, "prompt": [-1]}, 400, "prompt"),
    ("two prompts", COMPLETIONS, {"model": MODEL, "prompt": ["a", "b"]}, 400, "prompt"),
    ("response_format a string", CHAT, _chat("x", response_format="json"), 400, "response_format"),
    ("response_format type unknown", CHAT, _chat("x", response_format={"type": "yaml"}), 400, "response_format"),
    ("schema not an object", CHAT, _chat("x", response_format=_json_schema(5)), 400, "response_format"),
    (
        "schema keyword unknown",
        CHAT,
        _chat("x", response_format=_json_schema({"type": "object", "unknownKeywordXYZ": 1})),
        400,
        "response_format",
    ),
    (
        "schema nested 300 deep",
        CHAT,
        _chat("x", response_format=_json_schema(_nested_schema(300))),
        400,
        "response_format",
    ),
    ("stream_options a string", CHAT, _chat("x", stream=True, stream_options="yes"), 400, "stream_options"),
    ("malformed JSON", CHAT, b'{"model": "tiny-qwen", "messages": [', 400, None),
    ("body not UTF-8", CHAT, b'{"model": "\xff\xfe"}', 400, None),
    ("empty body", CHAT, b"", 400, None),
    ("body an array", CHAT, [1, 2], 400, None),
    ("body a string", COMPLETIONS, "prompt", 400, None),
    ("body a number", COMPLETIONS, 5, 400, None),
    ("body null", COMPLETIONS, None, 400, None),
    ("body nested 100000 deep", COMPLETIONS, b"[" * 100_000 + b"]" * 100_000, 400, None),
    ("unknown route", "/v1/nope", {"model": MODEL}, 404, None),
]


def test_every_client_mistake_is_a_4xx_naming_its_field(server: str) -> None:
    outcomes: list[tuple[str, int, str | None, str]] = []
    with httpx.Client(base_url=server, timeout=120) as http:
        for name, path, body, _, _ in MISTAKES:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = http.post(path, content=content, headers={"content-type": "application/json"})
            err = _error(r)
            outcomes.append((name, r.status_code, err["param"], err["message"]))
        assert http.get("/v1/completions").status_code == 405  # a wrong method: 4xx too
        assert http.post("/v1/completions", json={"model": MODEL, "prompt": "ok", "max_tokens": 2}).status_code == 200
    server_errors = [o for o in outcomes if o[1] >= 500]
    assert not server_errors, server_errors
    wrong = [
        (name, status, param, message)
        for (name, _, _, want_status, want_param), (_, status, param, message) in zip(MISTAKES, outcomes, strict=True)
        if (status, param) != (want_status, want_param)
    ]
    assert not wrong, "\n".join(map(str, wrong))


def test_errors_that_are_the_clients_fault_map_to_4xx() -> None:
    assert error_from(CompileCancelled("aborted")).status == 499
    budget = error_from(SchemaBudgetError("the schema at /properties/a expands to too many states"))
    assert (budget.status, budget.code, budget.param) == (400, "schema_too_complex", "response_format")
    assert error_from(SchemaError("bad")).code == "invalid_schema"
    for message, param in (
        ("n=9: this server allows at most n=4 per request", "n"),
        ("n * max_tokens = 4 * 600 = 2400: this server allows at most 2000 generated tokens per request", "max_tokens"),
    ):
        err = error_from(RequestTooLargeError(message))
        assert (err.status, err.code, err.param) == (400, "request_too_large", param)


# ---- /health ------------------------------------------------------------------------------------
def test_health_is_503_with_the_reason_when_the_engine_does_not_serve(qwen_tokenizer) -> None:
    llm = tiny_llm(qwen_tokenizer, num_kv_blocks=16, max_model_len=128)
    with running_app(build_app(llm, MODEL)) as url:
        assert httpx.get(url + "/health").json() == {"status": "ok"}
        llm.close()
        r = httpx.get(url + "/health")
        assert r.status_code == 503
        assert r.json()["status"] == "unhealthy" and "closed" in r.json()["reason"]


# ---- CLI ----------------------------------------------------------------------------------------
def test_serve_cli_passes_access_options_and_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    import tritonlm
    import tritonlm.server
    from tritonlm.cli import main

    seen: dict = {}

    class FakeLLM:
        def __init__(self, **options: object) -> None:
            seen["llm"] = options

        def close(self) -> None:
            seen["closed"] = True

    monkeypatch.setattr(tritonlm, "LLM", FakeLLM)
    monkeypatch.setattr(tritonlm.server, "serve", lambda llm, name, **options: seen.update(serve=options))
    monkeypatch.setenv("TRITONLM_API_KEY", "from-env")
    argv = ["serve", "--allowed-hosts", "a.example, b.example:8000", "--max-n", "3", "--max-request-tokens", "999"]
    argv += ["--compile-time-budget", "1.5", "--compile-size-budget", "5000", "--grammar-cache-bytes", "4096"]
    assert main(argv) == 0
    assert seen["llm"]["limits"] == RequestLimits(
        max_n=3, max_request_tokens=999, compile_time_budget_s=1.5, compile_size_budget=5000, grammar_cache_bytes=4096
    )
    options = seen["serve"]
    assert options["api_key"] == "from-env" and options["allowed_hosts"] == {"a.example", "b.example:8000"}
    assert options["max_request_bytes"] == DEFAULT_MAX_REQUEST_BYTES and seen["closed"]
    assert main(["serve", "--api-key", "from-flag", "--max-request-bytes", "100"]) == 0
    assert seen["serve"]["api_key"] == "from-flag" and seen["serve"]["max_request_bytes"] == 100
    assert seen["serve"]["allowed_hosts"] is None and seen["llm"]["limits"] == RequestLimits()
    monkeypatch.delenv("TRITONLM_API_KEY")
    assert main(["serve"]) == 0 and seen["serve"]["api_key"] is None
    # a bad option fails before the model loads
    seen.clear()
    for bad in (["--max-request-bytes", "0"], ["--max-n", "0"], ["--allowed-hosts", ","]):
        assert main(["serve", *bad]) == 2
    assert "llm" not in seen
