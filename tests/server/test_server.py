"""The OpenAI-compatible server on loopback, driven by the official openai client and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.server.support import running_server, tiny_llm

openai = pytest.importorskip("openai")
MODEL = "tiny-qwen"


def _has_constraints() -> bool:
    try:
        from tritonlm.constraints import compile_json_schema  # noqa: F401
    except ImportError:
        return False
    return True


needs_constraints = pytest.mark.skipif(not _has_constraints(), reason="constraint engine not available")


@pytest.fixture(scope="module")
def server(qwen_tokenizer):
    llm = tiny_llm(qwen_tokenizer, max_num_seqs=64, num_kv_blocks=512, max_model_len=1024)
    with running_server(llm, MODEL) as url:
        yield url, llm
    llm.close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _wait_blocks_released(url: str, timeout: float = 20.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = _metrics(url)
        if (m["tritonlm_kv_blocks_used"] == 0 and m["tritonlm_requests_running"] == 0) or time.monotonic() > deadline:
            return m
        time.sleep(0.1)


def test_models_health_and_metrics(server, client):
    url, _ = server
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    text = httpx.get(url + "/metrics").text
    for name in (
        "tritonlm_requests_total",
        "tritonlm_prompt_tokens_total",
        "tritonlm_completion_tokens_total",
        "tritonlm_requests_running",
        "tritonlm_requests_waiting",
        "tritonlm_batch_size",
        "tritonlm_kv_blocks_used",
        "tritonlm_prefix_cache_hit_rate",
    ):
        assert f"# TYPE {name} " in text


def test_chat_completion_matches_the_engine(server, client, qwen_tokenizer):
    _, llm = server
    messages = [{"role": "user", "content": "Say hello."}]
    resp = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0, seed=3)
    choice = resp.choices[0]
    from tritonlm.runtime.sampling_params import SamplingParams

    direct = llm.generate([messages], SamplingParams(max_tokens=12, temperature=0))[0]
    assert choice.message.content == direct.text
    assert choice.finish_reason in ("stop", "length")
    prompt_ids = qwen_tokenizer.encode(qwen_tokenizer.apply_chat_template(messages))
    assert resp.usage.prompt_tokens == len(prompt_ids)
    assert resp.usage.completion_tokens == len(direct.outputs[0].token_ids)


def test_streaming_chat_concatenates_to_the_full_text(client):
    messages = [{"role": "user", "content": "Count to five."}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens


def test_completions_n_stop_logprobs(client):
    resp = client.completions.create(
        model=MODEL, prompt="def add(a, b):", max_tokens=8, n=3, temperature=1.0, seed=11, logprobs=2
    )
    assert sorted(c.index for c in resp.choices) == [0, 1, 2]
    for c in resp.choices:
        assert c.logprobs is not None and len(c.logprobs.tokens) == len(c.logprobs.token_logprobs)
        assert all(len(t) <= 2 for t in c.logprobs.top_logprobs)
    again = client.completions.create(
        model=MODEL, prompt="def add(a, b):", max_tokens=8, n=3, temperature=1.0, seed=11, logprobs=2
    )
    assert [c.text for c in again.choices] == [c.text for c in resp.choices]
    assert resp.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in resp.choices)


@needs_constraints
def test_json_schema_response_format_validates(client):
    jsonschema = pytest.importorskip("jsonschema")
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    for seed in range(3):
        resp = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "A person as JSON."}],
            max_tokens=200,
            temperature=1.0,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        )
        content = resp.choices[0].message.content
        assert resp.choices[0].finish_reason == "stop", content
        jsonschema.validate(json.loads(content), schema)
    obj = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "JSON please"}],
        max_tokens=120,
        temperature=1.0,
        seed=5,
        response_format={"type": "json_object"},
    )
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict)


def _bad_requests(url: str) -> list[tuple[str, dict | bytes, int]]:
    long_prompt = "hello " * 2000
    bad = [
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404),
        ("/v1/chat/completions", b"{not json", 400),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": -1},
            400,
        ),
        ("/v1/completions", {"model": MODEL, "prompt": long_prompt, "max_tokens": 4}, 400),
    ]
    if _has_constraints():
        bad.append(
            (
                "/v1/chat/completions",
                {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "x"}],
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "s", "schema": {"type": "object", "unknownKeywordXYZ": 1}},
                    },
                },
                400,
            )
        )
    return bad


def test_bad_requests_get_4xx_while_a_good_request_completes(server):
    url, _ = server

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            good = asyncio.create_task(
                http.post(
                    "/v1/completions",
                    json={
                        "model": MODEL,
                        "prompt": "Once upon a time",
                        "max_tokens": 48,
                        "temperature": 0,
                        "ignore_eos": True,
                    },
                )
            )
            await asyncio.sleep(0.05)
            for path, body, status in _bad_requests(url):
                if isinstance(body, bytes):
                    r = await http.post(path, content=body, headers={"content-type": "application/json"})
                else:
                    r = await http.post(path, json=body)
                assert r.status_code == status, (path, body if isinstance(body, bytes) else body.get("model"), r.text)
                err = r.json()["error"]
                assert err["message"] and err["type"]
            r = await good
            assert r.status_code == 200
            assert r.json()["usage"]["completion_tokens"] == 48

    asyncio.run(run())


def test_disconnecting_clients_leak_no_blocks(server):
    url, _ = server

    async def one(http: httpx.AsyncClient, i: int) -> int:
        seen = 0
        async with http.stream(
            "POST",
            "/v1/completions",
            json={
                "model": MODEL,
                "prompt": f"story {i}",
                "max_tokens": 400,
                "stream": True,
                "ignore_eos": True,
            },
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    seen += 1
                    if seen >= 3:
                        break  # leave mid-stream: closing the response drops the connection
        return seen

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            seen = await asyncio.gather(*(one(http, i) for i in range(20)))
            assert all(s >= 3 for s in seen)

    before = _metrics(url)
    asyncio.run(run())
    after = _wait_blocks_released(url)
    assert after["tritonlm_kv_blocks_used"] == 0
    assert after["tritonlm_requests_running"] == 0 and after["tritonlm_requests_waiting"] == 0
    aborted = after['tritonlm_requests_total{status="aborted"}'] - before['tritonlm_requests_total{status="aborted"}']
    assert aborted == 20


def test_concurrent_streaming_clients_all_complete_and_batch(server):
    url, llm = server
    n_clients, n_tokens = 64, 64

    async def one(http: httpx.AsyncClient, i: int) -> tuple[str, int]:
        text, usage = [], None
        async with http.stream(
            "POST",
            "/v1/completions",
            json={
                "model": MODEL,
                "prompt": f"client {i} says",
                "max_tokens": n_tokens,
                "stream": True,
                "ignore_eos": True,
                "temperature": 0,
                "stream_options": {"include_usage": True},
            },
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    usage = event["usage"]["completion_tokens"]
                for c in event["choices"]:
                    text.append(c["text"])
        return "".join(text), usage

    async def run() -> list[tuple[str, int]]:
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=n_clients)) as http:
            return await asyncio.gather(*(one(http, i) for i in range(n_clients)))

    steps_before = len(llm.stats.batch_sizes)
    results = asyncio.run(run())
    assert all(usage == n_tokens for _, usage in results)
    batch_sizes = list(llm.stats.batch_sizes)[steps_before:]
    assert max(batch_sizes) >= 32, "concurrent clients must share engine steps"
    _wait_blocks_released(url)
