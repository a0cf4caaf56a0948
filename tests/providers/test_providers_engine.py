"""LocalProvider on a real tritonlm engine (tiny random model, real Qwen2.5 tokenizer) and
OpenAICompatibleProvider against a real OpenAI-compatible HTTP server on loopback.

The model's text is random; what is checked is what must hold anyway: constrained output
validates, token usage matches the engine's own counts, concurrent calls share batches,
limits refuse calls before the engine sees them, streaming equals the blocking result."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.server.support import TINY_QWEN, RecordingServer, recording_server
from tritonlm.model.qwen2 import Qwen2ForCausalLM
from tritonlm.providers import (
    LocalProvider,
    OpenAICompatibleProvider,
    ProviderAdapter,
    ProviderConfig,
    ProviderError,
    ResourceLimitExceeded,
    ResourceLimits,
    ResourceTracker,
    schema_problems,
)
from tritonlm.runtime.llm import LLM, AsyncLLM

pytest.importorskip("dspy")
needs_constraints = pytest.mark.skipif(
    not hasattr(__import__("tritonlm.constraints", fromlist=["_"]), "compile_json_schema"),
    reason="tritonlm.constraints.compile_json_schema is not available yet",
)

SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "kind": {"enum": ["alpha", "beta", "gamma"]},
        "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3},
    },
    "required": ["ok", "kind", "tags"],
    "additionalProperties": False,
}
ENGINE_OPTIONS: dict[str, Any] = {"num_kv_blocks": 512, "max_model_len": 1024}


@pytest.fixture(scope="module")
def tiny_loaded(qwen_tokenizer: Any) -> tuple[Any, Any]:
    return Qwen2ForCausalLM.random(TINY_QWEN, seed=0), qwen_tokenizer


class RecordingAsyncLLM(AsyncLLM):
    """An AsyncLLM that keeps every finished RequestOutput (the engine's own usage numbers)."""

    outputs: list[Any]

    async def generate(self, prompt: Any, params: Any = None, request_id: str | None = None) -> Any:
        async for delta in super().generate(prompt, params, request_id):
            if delta.finished:
                self.outputs.append(delta.output)
            yield delta


@pytest.fixture
def engine(tiny_loaded: tuple[Any, Any]) -> Iterator[RecordingAsyncLLM]:
    llm = RecordingAsyncLLM.from_loaded(tiny_loaded, **ENGINE_OPTIONS)
    llm.outputs = []
    yield llm
    llm.close()


@pytest.fixture
def server(tiny_loaded: tuple[Any, Any]) -> Iterator[RecordingServer]:
    llm = LLM.from_loaded(tiny_loaded, **ENGINE_OPTIONS)
    with recording_server(llm, "tiny-qwen") as running:
        yield running
    llm.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---- LocalProvider ---------------------------------------------------------------------------------
@needs_constraints
def test_local_structured_output_always_validates(engine: RecordingAsyncLLM) -> None:
    adapter = ProviderAdapter(LocalProvider(engine), ProviderConfig(max_tokens=160, temperature=1.0))

    async def many() -> list[Any]:
        return await asyncio.gather(*(adapter(prompt=f"Describe item {i}.", schema=SCHEMA, seed=i) for i in range(4)))

    predictions = run(many())
    for prediction in predictions:
        fields = {key: prediction[key] for key in prediction.keys()}
        assert schema_problems(fields, SCHEMA) == [] and set(fields) == {"ok", "kind", "tags"}
        assert prediction.__dict__["kind"] == prediction.kind
    assert len(engine.outputs) == 4
    assert all(out.outputs[0].finish_reason == "stop" for out in engine.outputs)


def test_local_tracker_counts_equal_the_engine_usage(engine: RecordingAsyncLLM) -> None:
    provider = LocalProvider(engine, system_prompt="Be brief.")
    adapter = ProviderAdapter(provider, ProviderConfig(use_xgrammar=False, temperature=0))
    prompts = ["Write a haiku.", "Name a colour.", "Count to three."]
    for i, prompt in enumerate(prompts):
        run(adapter(prompt=prompt, max_tokens=5 + 3 * i, ignore_eos=True))
    usage = adapter.get_resource_usage()
    assert usage is not None and usage.llm_calls == 3
    assert usage.prompt_tokens == sum(out.usage.prompt_tokens for out in engine.outputs)
    assert usage.completion_tokens == sum(out.usage.completion_tokens for out in engine.outputs) == 5 + 8 + 11
    # and the engine's prompt count is the chat the provider sent, tokenized
    tokenize = engine.llm.engine.tokenize_prompt
    assert usage.prompt_tokens == sum(len(tokenize(provider.messages(p))) for p in prompts)
    assert usage.prompt_tokens == sum(provider.count_prompt_tokens(p) for p in prompts)  # type: ignore[misc]


def test_local_concurrent_calls_share_engine_batches(engine: RecordingAsyncLLM) -> None:
    adapter = ProviderAdapter(LocalProvider(engine), ProviderConfig(use_xgrammar=False))
    stats = engine.llm.stats
    steps_before = len(stats.batch_sizes)

    async def burst() -> list[Any]:
        return await asyncio.gather(*(adapter(prompt=f"item {i}", max_tokens=24, ignore_eos=True) for i in range(6)))

    predictions = run(burst())
    assert len(predictions) == 6 and all(isinstance(p.text, str) for p in predictions)
    batch_sizes = list(stats.batch_sizes)[steps_before:]
    assert max(batch_sizes) >= 4, batch_sizes  # the requests ran together, not one after another
    # 6 x 24 decode tokens in far fewer steps than 6 x 24
    assert len(batch_sizes) < 6 * 24


def test_local_token_limit_counts_the_prompt_and_refuses_before_the_engine(engine: RecordingAsyncLLM) -> None:
    provider = LocalProvider(engine)
    adapter = ProviderAdapter(provider, ProviderConfig(use_xgrammar=False, max_tokens=8))
    prompt_tokens = provider.count_prompt_tokens("hello")
    assert prompt_tokens is not None and prompt_tokens > 5
    adapter.set_resource_tracker(ResourceTracker(ResourceLimits(max_tokens=prompt_tokens + 8 - 1)))
    with pytest.raises(ResourceLimitExceeded) as info:
        run(adapter(prompt="hello"))
    assert info.value.limit == "max_tokens" and engine.outputs == []
    adapter.set_resource_tracker(ResourceTracker(ResourceLimits(max_tokens=prompt_tokens + 8)))
    run(adapter(prompt="hello"))
    assert len(engine.outputs) == 1


def test_local_stream_equals_the_blocking_text_and_reports_usage(engine: RecordingAsyncLLM) -> None:
    from tritonlm.providers import collect_usage

    provider = LocalProvider(engine)

    async def both() -> tuple[str, list[str], Any]:
        text = await provider.generate_text("Say something.", max_tokens=12, temperature=0, ignore_eos=True)
        with collect_usage() as collector:
            pieces = [
                p
                async for p in provider.generate_stream("Say something.", max_tokens=12, temperature=0, ignore_eos=True)
            ]
        return text, pieces, collector

    text, pieces, collector = run(both())
    assert "".join(pieces) == text and len(pieces) > 1
    assert collector.completion_tokens == 12 and collector.prompt_tokens == engine.outputs[-1].usage.prompt_tokens


def test_local_engine_errors_are_wrapped(engine: RecordingAsyncLLM) -> None:
    adapter = ProviderAdapter(LocalProvider(engine), ProviderConfig(use_xgrammar=False))
    with pytest.raises(ProviderError) as info:  # longer than the engine's context
        run(adapter(prompt="word " * 3000, max_tokens=4))
    assert info.value.__cause__ is not None
    with pytest.raises(ProviderError) as info:
        run(adapter(prompt="x", no_such_option=1))
    assert "no_such_option" in str(info.value.__cause__)
    assert run(LocalProvider(engine).check_health()) is True


# ---- OpenAICompatibleProvider on loopback --------------------------------------------------------------
@needs_constraints
def test_remote_structured_output_uses_response_format_and_validates(server: RecordingServer) -> None:
    async def go() -> tuple[list[Any], Any]:
        provider = OpenAICompatibleProvider(server.base_url, server.model_name)
        await provider.initialize({"api_key": "test-key"})
        assert await provider.check_health()
        adapter = ProviderAdapter(provider, ProviderConfig(max_tokens=120, temperature=0.8))
        try:
            preds = await asyncio.gather(*(adapter(prompt=f"item {i}", schema=SCHEMA, seed=i) for i in range(3)))
        finally:
            await provider.aclose()
        return preds, adapter.get_resource_usage()

    predictions, usage = run(go())
    for prediction in predictions:
        assert schema_problems({k: prediction[k] for k in prediction.keys()}, SCHEMA) == []
    bodies = server.requests
    assert len(bodies) == 3 and server.authorizations == ["Bearer test-key"] * 3
    assert all(b["response_format"]["type"] == "json_schema" for b in bodies)
    assert all(b["response_format"]["json_schema"]["schema"] == SCHEMA for b in bodies)
    assert sorted(b["seed"] for b in bodies) == [0, 1, 2] and all(b["top_p"] == 0.95 for b in bodies)
    tokenize = server.llm.engine.tokenize_prompt
    assert usage.llm_calls == 3
    assert usage.prompt_tokens == sum(len(tokenize(b["messages"])) for b in bodies)
    assert usage.completion_tokens > 0


def test_remote_streaming_matches_blocking_and_reports_usage(server: RecordingServer) -> None:
    from tritonlm.providers import collect_usage

    async def go() -> tuple[str, list[str], Any, Any]:
        provider = OpenAICompatibleProvider(server.base_url, server.model_name)
        options = {"max_tokens": 10, "temperature": 0, "ignore_eos": True}
        try:
            with collect_usage() as blocking_usage:
                text = await provider.generate_text("Say something.", **options)
            with collect_usage() as stream_usage:
                pieces = [p async for p in provider.generate_stream("Say something.", **options)]
        finally:
            await provider.aclose()
        return text, pieces, blocking_usage, stream_usage

    text, pieces, blocking_usage, stream_usage = run(go())
    assert "".join(pieces) == text and len(pieces) > 1
    assert stream_usage.reports == blocking_usage.reports and stream_usage.completion_tokens == 10
    stream_body = server.requests[-1]
    assert stream_body["stream"] is True and stream_body["stream_options"] == {"include_usage": True}


def test_remote_failures_are_provider_errors_with_causes(server: RecordingServer) -> None:
    import httpx

    async def go() -> tuple[BaseException, BaseException, bool]:
        provider = OpenAICompatibleProvider(server.base_url, server.model_name)
        adapter = ProviderAdapter(provider, ProviderConfig(use_xgrammar=False))
        with pytest.raises(ProviderError) as too_long:
            await adapter(prompt="x", max_tokens=100_000)  # over the model's context: HTTP 400
        await provider.aclose()
        dead = OpenAICompatibleProvider("http://127.0.0.1:9/v1", "m", timeout_s=5)
        with pytest.raises(ProviderError) as refused:
            await ProviderAdapter(dead, ProviderConfig(use_xgrammar=False))(prompt="x")
        healthy = await dead.check_health()
        await dead.aclose()
        return too_long.value, refused.value, healthy

    too_long, refused, dead_is_healthy = run(go())
    assert isinstance(too_long.__cause__, httpx.HTTPStatusError) and "400" in str(too_long)
    assert isinstance(refused.__cause__, httpx.ConnectError)
    assert dead_is_healthy is False


def test_remote_text_route_extracts_json_and_raises_with_raw_text(server: RecordingServer) -> None:
    from tritonlm.providers import StructuredOutputError

    options = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}

    async def go() -> tuple[str, BaseException]:
        provider = OpenAICompatibleProvider(server.base_url, server.model_name)
        adapter = ProviderAdapter(provider, ProviderConfig(use_xgrammar=False))
        try:
            text = await provider.generate_text("x", **options)
            with pytest.raises(StructuredOutputError) as info:  # 6 random tokens hold no valid object
                await adapter(prompt="x", schema=SCHEMA, **options)
        finally:
            await provider.aclose()
        return text, info.value

    text, error = run(go())
    assert "response_format" not in server.requests[-1]
    assert error.raw_text == text  # type: ignore[attr-defined]
