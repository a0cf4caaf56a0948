"""Server load test on loopback with the default model: 64 concurrent streaming clients.

Run: ``make bench PYTEST_ARGS="benches/bench_server.py -s"``. Gate: aggregate tokens/s of 64
concurrent clients >= 6x a single client's, measured in one run; 20 clients leaving mid-stream
leak no KV blocks (read from /metrics).
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.server.support import running_server

MODEL = "default"
N_CLIENTS = 64
N_TOKENS = 64
PROMPTS = [
    "Write a Python function that reverses a list.",
    "Explain what a hash map is.",
    "Write a haiku about compilers.",
    "List three uses of Rust.",
]


@pytest.fixture(scope="module")
def server(default_model_bf16):
    from tritonlm.runtime.llm import LLM

    llm = LLM.from_loaded(default_model_bf16, max_num_seqs=N_CLIENTS, max_model_len=2048, max_num_batched_tokens=1024)
    with running_server(llm, MODEL) as url:
        yield url, llm
    llm.close()


async def _client(http: httpx.AsyncClient, prompt: str) -> tuple[str, int, float]:
    start = time.perf_counter()
    parts, usage = [], 0
    async with http.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": N_TOKENS,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
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
                parts.append(c["delta"].get("content") or "")
    return "".join(parts), usage, time.perf_counter() - start


def _metrics(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_64_streaming_clients_vs_one(benchmark, server):
    url, _ = server

    async def run(n: int, prompt: str | None = None) -> tuple[list[tuple[str, int, float]], float]:
        async with httpx.AsyncClient(base_url=url, timeout=1800, limits=httpx.Limits(max_connections=n)) as http:
            start = time.perf_counter()
            results = await asyncio.gather(*(_client(http, prompt or PROMPTS[i % len(PROMPTS)]) for i in range(n)))
            return results, time.perf_counter() - start

    singles = {}
    t_single = 0.0
    for p in PROMPTS:
        [(text, usage, elapsed)], _ = asyncio.run(run(1, p))
        assert usage == N_TOKENS
        singles[p] = text
        t_single += elapsed
    single_rate = len(PROMPTS) * N_TOKENS / t_single
    timings = {}

    def many() -> None:
        timings["results"], timings["elapsed"] = asyncio.run(run(N_CLIENTS))

    benchmark.pedantic(many, rounds=1, iterations=1)
    results, elapsed = timings["results"], timings["elapsed"]
    assert all(usage == N_TOKENS for _, usage, _ in results), "every request completes with all its tokens"
    mismatched = sum(text != singles[PROMPTS[i % len(PROMPTS)]] for i, (text, _, _) in enumerate(results))
    aggregate = N_CLIENTS * N_TOKENS / elapsed
    ratio = aggregate / single_rate
    benchmark.extra_info.update(
        single_tok_per_s=single_rate, aggregate_tok_per_s=aggregate, ratio=ratio, greedy_mismatches=mismatched
    )
    print(
        f"\nserver: 1 client {single_rate:.1f} tok/s, {N_CLIENTS} clients {aggregate:.1f} tok/s "
        f"aggregate, ratio {ratio:.1f}x, outputs differing from the single-client run: {mismatched}"
    )
    assert ratio >= 6.0


def test_20_disconnecting_clients_leak_no_blocks(server):
    url, _ = server

    async def leave_early(http: httpx.AsyncClient, i: int) -> None:
        async with http.stream(
            "POST",
            "/v1/completions",
            json={
                "model": MODEL,
                "prompt": f"Write a long story number {i}.",
                "max_tokens": 500,
                "stream": True,
                "ignore_eos": True,
            },
        ) as r:
            n = 0
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    n += 1
                    if n >= 2:
                        return

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            await asyncio.gather(*(leave_early(http, i) for i in range(20)))

    asyncio.run(run())
    deadline = time.monotonic() + 60
    while True:
        m = _metrics(url)
        if m["tritonlm_kv_blocks_used"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert m["tritonlm_kv_blocks_used"] == 0 and m["tritonlm_requests_running"] == 0
