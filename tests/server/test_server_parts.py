"""The server's pieces without an engine: response shapes and frames, SSE framing, metrics
text, and the request models' prompt and sampling fields."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from tritonlm.errors import ContextTooLongError
from tritonlm.runtime.metrics import EngineMetrics
from tritonlm.runtime.outputs import CompletionOutput, RequestOutput, RequestUsage, StreamDelta
from tritonlm.runtime.sampler import TokenLogprob
from tritonlm.server.errors import APIError
from tritonlm.server.metrics import RequestCounters, render_metrics
from tritonlm.server.protocol import ChatCompletionRequest, CompletionRequest
from tritonlm.server.responses import ChatShape, CompletionShape, ResponseFrame
from tritonlm.server.sse import DONE, sse, sse_events


class Vocab:
    token_bytes = (b"a", b"b", b"\xc3\xa9")


def _output(*texts: str, error: BaseException | None = None, logprobs: bool = False) -> RequestOutput:
    lp = [TokenLogprob(2, -0.5, ((2, -0.5), (0, -1.0)))] if logprobs else None
    outputs = [CompletionOutput(i, t, [2], "error" if error else "stop", lp, error) for i, t in enumerate(texts)]
    return RequestOutput("r", "p", [0, 1], outputs, RequestUsage(2, len(texts), 1, 0.1, 0.2, None))


def _frame(shape: Any, include_usage: bool = False) -> ResponseFrame:
    return ResponseFrame(shape, id="x-1", created=7, model="m", include_usage=include_usage)


# ---- responses ----------------------------------------------------------------------------------
def test_chat_body_and_chunks() -> None:
    frame = _frame(ChatShape(Vocab()), include_usage=True)
    body = frame.body(_output("hi", logprobs=True))
    assert body["object"] == "chat.completion" and body["id"] == "x-1" and body["model"] == "m"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "hi"} and choice["finish_reason"] == "stop"
    assert choice["logprobs"]["content"][0]["token"] == "é"
    assert choice["logprobs"]["content"][0]["bytes"] == [0xC3, 0xA9]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    head = frame.head_chunks(2)
    assert [c["choices"][0]["delta"] for c in head] == [{"role": "assistant", "content": ""}] * 2
    assert frame.text_chunk(1, "yo")["choices"][0] == {
        "index": 1,
        "delta": {"content": "yo"},
        "logprobs": None,
        "finish_reason": None,
    }
    final = frame.final_chunks(_output("hi"))
    assert final[0]["object"] == "chat.completion.chunk" and final[0]["choices"][0]["finish_reason"] == "stop"
    assert final[-1]["choices"] == [] and final[-1]["usage"]["total_tokens"] == 3


def test_completion_body_and_chunks() -> None:
    frame = _frame(CompletionShape(Vocab()))
    body = frame.body(_output("hi", "ho", logprobs=True))
    assert body["object"] == "text_completion" and [c["text"] for c in body["choices"]] == ["hi", "ho"]
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["é"] and logprobs["top_logprobs"] == [{"é": -0.5, "a": -1.0}]
    assert frame.head_chunks(3) == []
    assert frame.text_chunk(0, "t")["choices"][0]["text"] == "t"
    final = frame.final_chunks(_output("hi", logprobs=True))
    assert len(final) == 1 and final[0]["choices"][0] == {
        "index": 0,
        "text": "",
        "logprobs": None,
        "finish_reason": "stop",
    }


# ---- sse ----------------------------------------------------------------------------------------
def _events(raw: list[bytes]) -> list[Any]:
    out = []
    for event in raw:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        data = event[6:-2].decode()
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _stream(deltas: list[StreamDelta], closed: list[bool]) -> AsyncGenerator[StreamDelta, None]:
    async def gen() -> AsyncGenerator[StreamDelta, None]:
        try:
            for delta in deltas:
                yield delta
        finally:
            closed.append(True)

    return gen()


def _collect(deltas: list[StreamDelta], *, disconnected: bool = False) -> tuple[list[Any], list[Any], list[bool]]:
    ended: list[Any] = []
    closed: list[bool] = []

    async def is_disconnected() -> bool:
        return disconnected

    async def run() -> list[bytes]:
        stream = _stream(deltas, closed)
        first = await anext(stream)  # as the server does before answering
        frame = _frame(CompletionShape(Vocab()))
        body = sse_events(stream, first, frame, num_completions=1, is_disconnected=is_disconnected, on_end=ended.append)
        return [event async for event in body]

    return _events(asyncio.run(run())), ended, closed


def test_sse_streams_text_then_final_chunks_then_done() -> None:
    output = _output("ab")
    deltas = [StreamDelta("r", 0, "a"), StreamDelta("r", 0, "b", finished=True, output=output)]
    events, ended, closed = _collect(deltas)
    assert [e["choices"][0]["text"] for e in events[:-1]] == ["a", "b", ""]
    assert events[-1] == "[DONE]" and ended == [output] and closed == [True]
    assert sse("[DONE]") == DONE


def test_sse_reports_an_engine_error_as_an_error_event() -> None:
    output = _output("", error=ContextTooLongError("too long"))
    events, ended, _ = _collect([StreamDelta("r", 0, "", finished=True, output=output)])
    assert events[0]["error"]["code"] == "context_length_exceeded" and events[-1] == "[DONE]"
    assert ended == [output]


def test_sse_stops_when_the_client_is_gone() -> None:
    deltas = [StreamDelta("r", 0, "a"), StreamDelta("r", 0, "b"), StreamDelta("r", 0, "", finished=True)]
    events, ended, closed = _collect(deltas, disconnected=True)
    assert [e["choices"][0]["text"] for e in events] == ["a"] and ended == [None] and closed == [True]


# ---- metrics ------------------------------------------------------------------------------------
def test_metrics_text_has_the_counters_and_the_engine_snapshot() -> None:
    counters = RequestCounters()
    counters.account(_output("x"))
    counters.account(None)
    counters.account(_output("x", error=ContextTooLongError("no")))
    counters.account_rejected()
    engine = EngineMetrics(3, 4, 5, 6, 0, 0, 100, 40, 9, 1024)
    text = render_metrics(counters, engine)
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert samples['tritonlm_requests_total{status="ok"}'] == "1"
    assert samples['tritonlm_requests_total{status="error"}'] == "2"
    assert samples['tritonlm_requests_total{status="aborted"}'] == "1"
    assert samples["tritonlm_requests_running"] == "3" and samples["tritonlm_requests_waiting"] == "4"
    assert samples["tritonlm_batch_size"] == "5" and samples["tritonlm_engine_steps_total"] == "6"
    assert samples["tritonlm_kv_blocks_total"] == "100" and samples["tritonlm_kv_blocks_used"] == "40"
    assert samples["tritonlm_prefix_cache_hit_blocks_total"] == "9"
    assert float(samples["tritonlm_prefix_cache_hit_rate"]) == pytest.approx(0.5)
    assert "# TYPE tritonlm_requests_total counter" in text and text.endswith("\n")


# ---- protocol -----------------------------------------------------------------------------------
def test_sampling_fields_are_the_declared_sampling_fields_only() -> None:
    req = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True, top_logprobs=2, user="u", foo=1
    )
    fields = req.sampling_fields()
    assert {"temperature", "top_p", "n", "stop", "max_completion_tokens", "logprobs", "top_logprobs"} <= set(fields)
    assert not {"model", "messages", "stream", "stream_options", "user", "foo"} & set(fields)
    assert CompletionRequest(model="m", prompt="p").sampling_fields()["max_tokens"] == 16


def test_engine_prompts() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "b"}]
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": parts}])
    assert chat.engine_prompt() == [{"role": "user", "content": "ab"}]
    assert CompletionRequest(model="m", prompt=["only"]).engine_prompt() == "only"
    assert CompletionRequest(model="m", prompt=[[1, 2]]).engine_prompt() == [1, 2]
    assert CompletionRequest(model="m", prompt=[3, 4]).engine_prompt() == [3, 4]
    for prompt, param in ((["a", "b"], "prompt"), ([], "prompt"), ([[]], "prompt")):
        with pytest.raises(APIError) as info:
            CompletionRequest(model="m", prompt=prompt).engine_prompt()
        assert info.value.status == 400 and info.value.param == param
    assert CompletionRequest(model="m", prompt="p", stream_options={"include_usage": True}).include_usage


def test_a_closed_server_keeps_no_reference_to_its_model(qwen_tokenizer) -> None:
    """FastAPI caches endpoint functions at module level; routes that closed over the LLM kept
    every served model resident after its app was gone (found by the suite's memory report)."""
    import gc
    import weakref

    import httpx

    from tests.server.support import TINY_QWEN, running_server
    from tritonlm.model.qwen2 import Qwen2ForCausalLM
    from tritonlm.runtime.llm import LLM

    model = Qwen2ForCausalLM.random(TINY_QWEN, seed=0)
    alive = weakref.ref(model)
    llm = LLM.from_loaded((model, qwen_tokenizer), max_num_seqs=4)
    del model
    with running_server(llm, "tiny") as url:
        for path in ("/health", "/metrics", "/v1/models"):
            assert httpx.get(url + path, timeout=30).status_code == 200
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 3}
        assert httpx.post(url + "/v1/completions", json=body, timeout=30).status_code == 200
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        assert httpx.post(url + "/v1/chat/completions", json=chat, timeout=30).status_code == 200
    llm.close()
    del llm
    gc.collect()
    assert alive() is None
