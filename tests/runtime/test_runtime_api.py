"""The public API over a tiny model: LLM.generate (batched), stream, AsyncLLM, threads, abort."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.runtime.helpers import random_prompts, reference_greedy, tiny_model
from tritonlm.errors import ConfigError, ContextTooLongError
from tritonlm.runtime.engine import Engine, EngineConfig
from tritonlm.runtime.llm import LLM, AsyncLLM
from tritonlm.runtime.outputs import StreamDelta
from tritonlm.runtime.sampler import SamplerOutput
from tritonlm.runtime.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(qwen_tokenizer):
    with LLM.from_loaded((tiny_model(), qwen_tokenizer), num_kv_blocks=256, max_model_len=256) as llm:
        yield llm


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    return random_prompts(16, lo=2, hi=40, seed=21)


@pytest.fixture(scope="module")
def references(prompts) -> list[list[int]]:
    return [reference_greedy(tiny_model(), p, GREEDY.max_tokens) for p in prompts]


def test_generate_is_batched_and_matches_the_reference(llm, prompts, references) -> None:
    outputs = llm.generate(prompts[:6], GREEDY)
    assert [o.outputs[0].token_ids for o in outputs] == references[:6]
    for o, p in zip(outputs, prompts[:6], strict=True):
        assert o.prompt_token_ids == p
        assert o.usage.prompt_tokens == len(p) and o.usage.completion_tokens == 20
        assert o.usage.time_to_first_token_s is not None and o.usage.tokens_per_s > 0


def test_generate_accepts_text_chat_and_token_prompts(llm, qwen_tokenizer) -> None:
    chat = [{"role": "user", "content": "Write a haiku about caches."}]
    single = llm.generate(chat, GREEDY)
    assert len(single) == 1
    templated = qwen_tokenizer.encode(qwen_tokenizer.apply_chat_template(chat, add_generation_prompt=True))
    assert single[0].prompt_token_ids == templated
    outs = llm.generate(["plain text prompt", chat, templated], [GREEDY, GREEDY, GREEDY])
    assert outs[0].prompt_token_ids == qwen_tokenizer.encode("plain text prompt")
    assert outs[1].outputs[0].token_ids == outs[2].outputs[0].token_ids == single[0].outputs[0].token_ids
    with pytest.raises(ConfigError):
        llm.generate(["a", "b"], [GREEDY])


def test_too_long_prompt_fails_only_its_request(llm, prompts, references) -> None:
    outs = llm.generate([prompts[0], list(range(500, 800)), prompts[1]], GREEDY)
    assert isinstance(outs[1].error, ContextTooLongError)
    assert outs[1].outputs[0].finish_reason == "error"
    assert outs[0].outputs[0].token_ids == references[0]
    assert outs[2].outputs[0].token_ids == references[1]


def test_stream_deltas_concatenate_to_the_final_text(llm, prompts) -> None:
    params = SamplingParams(temperature=0.8, max_tokens=40, seed=5, ignore_eos=True)
    stream = llm.stream(prompts[2], params)
    deltas = list(stream)
    assert stream.output is not None
    assert "".join(deltas) == stream.output.text
    assert len(deltas) > 1
    assert stream.output.usage.completion_tokens == 40
    # seeded: the blocking API gives the same text
    assert llm.generate(prompts[2], params)[0].text == stream.output.text


def test_first_delta_arrives_before_generation_ends(llm, prompts) -> None:
    steps: list[tuple[int, StreamDelta]] = []
    done = threading.Event()

    def sink(delta: StreamDelta) -> None:  # runs on the engine thread, right after each step
        steps.append((llm.engine.stats.num_steps, delta))
        if delta.finished:
            done.set()

    llm.submit(prompts[3], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True), sink)
    assert done.wait(120)
    first_step = next(s for s, d in steps if d.text)
    assert first_step < steps[-1][0]
    assert steps[-1][1].finished and "".join(d.text for _, d in steps) == steps[-1][1].output.text


def test_stream_never_splits_multibyte_characters(qwen_tokenizer) -> None:
    """Force a token sequence made of single-byte tokens that split 2-, 3- and 4-byte characters."""
    text = "é€😀 ok ñ"
    byte_ids = {b: i for i, b in enumerate(qwen_tokenizer.token_bytes) if len(b) == 1}
    forced = [byte_ids[bytes([b])] for b in text.encode("utf-8")]
    engine = Engine(tiny_model(), qwen_tokenizer, EngineConfig(num_kv_blocks=64))
    queue = list(forced)
    engine.sampler = lambda logits, reqs: SamplerOutput([queue.pop(0) for _ in reqs], [None] * len(reqs))
    rid = engine.add_request([1, 2, 3], SamplingParams(max_tokens=len(forced), ignore_eos=True))
    deltas: list[str] = []
    final = None
    while engine.has_unfinished_requests:
        for d in engine.step():
            if d.text:
                deltas.append(d.text)
            if d.finished:
                final = d.output
    assert final is not None and final.request_id == rid
    assert "".join(deltas) == final.text == text
    assert all("\ufffd" not in d for d in deltas)
    assert len(deltas) >= 5  # one delta per completed character, not one at the end


def test_sixteen_threads_are_served_together(llm, prompts, references) -> None:
    start = threading.Barrier(16)
    results: dict[int, list[int]] = {}
    before = len(llm.stats.batch_sizes)

    def worker(i: int) -> None:
        start.wait()
        results[i] = llm.generate(prompts[i], GREEDY)[0].outputs[0].token_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [results[i] for i in range(16)] == references
    sizes = list(llm.stats.batch_sizes)[before:]
    assert max(sizes) == 16, sizes


def test_async_generate_is_an_async_iterator(llm, prompts, references) -> None:
    allm = AsyncLLM.from_llm(llm)

    async def one(i: int) -> tuple[str, list[int]]:
        text = ""
        async for delta in allm.generate(prompts[i], GREEDY):
            text += delta.text
            if delta.finished:
                assert delta.output is not None and delta.output.text == text
                return text, delta.output.outputs[0].token_ids
        raise AssertionError("no finished delta")

    async def main() -> list[tuple[str, list[int]]]:
        return await asyncio.gather(*(one(i) for i in range(4)))

    results = asyncio.run(main())
    assert [tokens for _, tokens in results] == references[:4]


def test_abort_and_early_stream_close_free_the_blocks(llm, prompts) -> None:
    params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
    stream = llm.stream(prompts[4], params)
    next(iter(stream))
    stream.close()  # aborts
    finished = threading.Event()
    outputs = []

    def sink(delta: StreamDelta) -> None:
        if delta.finished:
            outputs.append(delta.output)
            finished.set()

    rid = llm.submit(prompts[5], params, sink)
    llm.abort(rid)
    assert finished.wait(60)
    assert outputs[0].outputs[0].finish_reason == "abort"
    # let the loop go idle, then every block must be free or cached
    for _ in range(200):
        if not llm.engine.has_unfinished_requests:
            break
        threading.Event().wait(0.05)
    llm.engine.check_block_accounting()
