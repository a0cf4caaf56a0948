"""One request cannot stall, starve or sink the others: per-request caps, prompt byte bounds,
preparation off the step loop (with cancellation), fair seats in the scheduler, loop health."""

from __future__ import annotations

import threading
import time

import pytest

from tests.runtime.helpers import make_engine, tiny_model
from tritonlm.errors import ContextTooLongError, RequestTooLargeError, TokenizationError
from tritonlm.runtime.block_manager import BlockManager
from tritonlm.runtime.config import EngineConfig, RequestLimits
from tritonlm.runtime.llm import LLM
from tritonlm.runtime.request import Request
from tritonlm.runtime.sampling_params import SamplingParams
from tritonlm.runtime.scheduler import Scheduler, SchedulerOutput

# ---- scheduler: no group monopolises the seats or the blocks -----------------------------------


def _seq(group: str, index: int, order: int, prompt_len: int = 5, max_tokens: int = 50) -> Request:
    return Request(
        request_id=group if index == 0 else f"{group}#{index}",
        group_id=group,
        index=index,
        token_ids=[11 + order] * prompt_len,
        num_prompt_tokens=prompt_len,
        params=SamplingParams(max_tokens=max_tokens, temperature=0),
        sampling_seed=0,
        arrival_order=order,
        max_total_tokens=prompt_len + max_tokens,
    )


def _advance(sched: Scheduler, out: SchedulerOutput) -> None:
    sched.mark_computed(out)
    for req in out.requests.values():
        if req.num_computed_tokens == req.num_tokens:
            req.token_ids.append(1)


def test_a_full_batch_of_one_group_yields_a_seat_to_another_group() -> None:
    sched = Scheduler(BlockManager(256, 4), max_num_seqs=8, max_num_batched_tokens=64)
    big = [_seq("big", i, 0) for i in range(8)]
    for r in big:
        sched.add(r)
    _advance(sched, sched.schedule())
    assert len(sched.running) == 8
    other = _seq("other", 0, 1)
    sched.add(other)
    out = sched.schedule()
    assert "other" in out.num_scheduled_tokens  # admitted at the next step
    assert len(sched.running) == 8
    # the yielded sequence waits first in line and is not scheduled; no thrashing afterwards
    assert [r.request_id for r in sched.waiting] == ["big#7"]
    assert "big#7" not in out.num_scheduled_tokens
    for _ in range(5):
        _advance(sched, out)
        out = sched.schedule()
        assert "other" in out.num_scheduled_tokens
        assert [r.request_id for r in sched.waiting] == ["big#7"]
    assert sched.num_preemptions == 1


def test_the_rest_of_a_large_group_does_not_hold_the_queue_against_others() -> None:
    # one seat is taken by another client, so n=8 gets 7 seats and its 8th sequence waits at
    # the head; a new request behind it must not wait for the whole group to finish
    sched = Scheduler(BlockManager(256, 4), max_num_seqs=8, max_num_batched_tokens=64)
    sched.add(_seq("bg", 0, 0))
    _advance(sched, sched.schedule())
    for i in range(8):
        sched.add(_seq("big", i, 1))
    out = sched.schedule()
    _advance(sched, out)
    assert [r.request_id for r in sched.waiting] == ["big#7"]
    sched.add(_seq("new", 0, 2))
    out = sched.schedule()
    assert "new" in out.num_scheduled_tokens
    assert len(sched.running) == 8
    assert sorted(r.request_id for r in sched.waiting) == ["big#6", "big#7"]
    for _ in range(5):
        _advance(sched, out)
        out = sched.schedule()
        assert {"new", "bg"} <= set(out.num_scheduled_tokens)
    assert sched.num_preemptions == 1


def test_a_new_group_blocked_at_the_head_keeps_fcfs() -> None:
    # a request whose group runs nothing and finds no seat stops admission: no overtaking
    sched = Scheduler(BlockManager(256, 4), max_num_seqs=2, max_num_batched_tokens=64)
    for name, order in (("a", 0), ("b", 1)):
        sched.add(_seq(name, 0, order))
    _advance(sched, sched.schedule())
    sched.add(_seq("c", 0, 2))
    sched.add(_seq("d", 0, 3))
    out = sched.schedule()
    assert set(out.num_scheduled_tokens) == {"a", "b"}
    assert [r.request_id for r in sched.waiting] == ["c", "d"]


def test_seats_are_yielded_only_to_a_group_two_smaller() -> None:
    sched = Scheduler(BlockManager(256, 4), max_num_seqs=4, max_num_batched_tokens=64)
    for r in [_seq("a", 0, 0), _seq("a", 1, 0), _seq("b", 0, 1), _seq("b", 1, 1)]:
        sched.add(r)
    _advance(sched, sched.schedule())
    sched.add(_seq("c", 0, 2))
    out = sched.schedule()
    # a and b hold 2 each, c none: the newest of the largest groups yields (b#1)
    assert "c" in out.num_scheduled_tokens
    assert [r.request_id for r in sched.waiting] == ["b#1"]
    # now a 2, b 1, c 1: b#1 (its group holds 1) finds no group holding 3, so it waits
    for _ in range(4):
        _advance(sched, out)
        out = sched.schedule()
        assert [r.request_id for r in sched.waiting] == ["b#1"]
    sched.add(_seq("d", 0, 3))
    _advance(sched, out)
    out = sched.schedule()
    # b#1 waits at the head but b already runs, so d behind it is tried: a holds 2, d none, so
    # a's newest yields (and waits behind d); then every group holds one seat and nothing moves
    assert "d" in out.num_scheduled_tokens
    assert [r.request_id for r in sched.waiting] == ["b#1", "a#1"]
    for _ in range(4):
        _advance(sched, out)
        out = sched.schedule()
        assert set(out.num_scheduled_tokens) == {"a", "b", "c", "d"}
    assert sched.num_preemptions == 2


def test_a_group_holding_every_block_yields_blocks_to_another_group() -> None:
    # 4 sequences of one group fill the 16 blocks of 4 tokens; another request needs 2 blocks
    sched = Scheduler(BlockManager(16, 4), max_num_seqs=16, max_num_batched_tokens=64)
    for i in range(4):
        sched.add(_seq("big", i, 0, prompt_len=14))
    _advance(sched, sched.schedule())
    assert sched.block_manager.num_free_blocks == 0 and len(sched.running) == 4
    other = _seq("other", 0, 1, prompt_len=6)
    sched.add(other)
    out = sched.schedule()
    assert "other" in out.num_scheduled_tokens
    sched.block_manager.check_invariants()


def test_preemption_for_blocks_takes_the_largest_group_first() -> None:
    sched = Scheduler(BlockManager(9, 4), max_num_seqs=16, max_num_batched_tokens=64)
    small = _seq("small", 0, 0, prompt_len=4)
    sched.add(small)
    big = [_seq("big", i, 1, prompt_len=4) for i in range(3)]
    for r in big:
        sched.add(r)
    out = sched.schedule()
    _advance(sched, out)
    # each sequence now needs a second block; 9 blocks cannot hold 4 x 2 + growth forever
    victims = []
    for _ in range(12):
        out = sched.schedule()
        victims.extend(r for r in [*sched.waiting] if r.num_preemptions and r not in victims)
        _advance(sched, out)
    assert victims, "the cache was never exhausted: the test needs fewer blocks"
    assert all(v.group_id == "big" for v in victims)
    assert small.status.value == "running"


# ---- per-request caps and prompt bounds -------------------------------------------------------


def test_caps_on_n_and_generated_tokens(qwen_tokenizer) -> None:
    limits = RequestLimits(max_n=4, max_request_tokens=100)
    engine = make_engine(qwen_tokenizer, limits=limits)
    with pytest.raises(RequestTooLargeError, match="n=5"):
        engine.add_request([1, 2, 3], SamplingParams(n=5, max_tokens=1))
    with pytest.raises(RequestTooLargeError, match="4 \\* 26 = 104"):
        engine.add_request([1, 2, 3], SamplingParams(n=4, max_tokens=26))
    engine.add_request([1, 2, 3], SamplingParams(n=4, max_tokens=25))  # exactly at the caps
    assert engine.num_unfinished_requests == 1


class _CountingTokenizer:
    """The real tokenizer, counting encode and chat-template calls."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        self.calls += 1
        return self.inner.encode(text, add_special_tokens=add_special_tokens)

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = True) -> str:
        self.calls += 1
        return self.inner.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    @property
    def token_bytes(self):
        return self.inner.token_bytes


def test_a_prompt_whose_bytes_prove_it_too_long_is_refused_before_tokenizing(qwen_tokenizer) -> None:
    from tritonlm.runtime.inputs import InputProcessor

    counting = _CountingTokenizer(qwen_tokenizer)
    inputs = InputProcessor(counting, qwen_tokenizer.vocab_size)
    longest = inputs.longest_token_bytes
    assert longest == max(len(b) for b in qwen_tokenizer.token_bytes)
    limit = 1000
    huge = "word " * (limit * longest)  # 5 * limit * longest bytes
    start = time.perf_counter()
    with pytest.raises(ContextTooLongError, match="bytes"):
        inputs.tokenize(huge, max_prompt_tokens=limit)
    with pytest.raises(ContextTooLongError, match="bytes"):
        inputs.tokenize([{"role": "user", "content": [{"type": "text", "text": huge}]}], max_prompt_tokens=limit)
    assert counting.calls == 0
    assert time.perf_counter() - start < 1.0
    # just over the bound by tokens but not by bytes: tokenized, then refused by its token count
    over = "hello " * (limit + 5)
    with pytest.raises(ContextTooLongError, match="tokens"):
        inputs.tokenize(over, max_prompt_tokens=limit)
    assert counting.calls == 1
    # a prompt exactly at the limit passes
    ids = inputs.tokenize(over, max_prompt_tokens=None)
    assert inputs.tokenize(ids[:limit], max_prompt_tokens=limit) == ids[:limit]


def test_the_byte_bound_never_refuses_a_prompt_that_fits(qwen_tokenizer) -> None:
    from tritonlm.runtime.inputs import InputProcessor

    inputs = InputProcessor(qwen_tokenizer, qwen_tokenizer.vocab_size)
    # text made of the longest tokens packs the most bytes per token
    longest_id = max(range(len(qwen_tokenizer.token_bytes)), key=lambda i: len(qwen_tokenizer.token_bytes[i]))
    text = qwen_tokenizer.decode([longest_id] * 40)
    n = len(qwen_tokenizer.encode(text))
    assert inputs.tokenize(text, max_prompt_tokens=n) == qwen_tokenizer.encode(text)


@pytest.mark.parametrize(
    ("prompt", "where"),
    [
        ("ok \ud800 text", "the prompt"),
        ([{"role": "user", "content": "a\udfffb"}], "messages\\[0\\].content"),
        ([{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}], "messages\\[0\\].content\\[0\\].text"),
    ],
)
def test_a_lone_surrogate_is_a_tokenization_error(qwen_tokenizer, prompt, where) -> None:
    from tritonlm.runtime.inputs import InputProcessor

    inputs = InputProcessor(qwen_tokenizer, qwen_tokenizer.vocab_size)
    with pytest.raises(TokenizationError, match=f"{where} is not valid Unicode"):
        inputs.tokenize(prompt, max_prompt_tokens=100)


# ---- the loop: preparation on workers, cancellation, health --------------------------------------


def _tiny_llm(tokenizer, **options) -> LLM:
    options.setdefault("num_kv_blocks", 256)
    return LLM.from_loaded((tiny_model(), tokenizer), **options)


def test_a_slow_preparation_does_not_stall_running_requests(qwen_tokenizer, monkeypatch) -> None:
    llm = _tiny_llm(qwen_tokenizer)
    engine = llm.engine
    release = threading.Event()
    real_prepare = engine.prepare

    def prepare(prompt, params=None, cancelled=None):
        if prompt == "slow":
            while not release.is_set() and not (cancelled and cancelled()):
                time.sleep(0.01)
        return real_prepare(prompt, params, cancelled)

    monkeypatch.setattr(engine, "prepare", prepare)
    try:
        stream = llm.stream([5, 6, 7], SamplingParams(max_tokens=60, ignore_eos=True))
        slow_done: list = []
        slow_id = llm.submit("slow", SamplingParams(max_tokens=2), slow_done.append)
        gaps, last = [], time.perf_counter()
        for _ in stream:
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        assert stream.output is not None and stream.output.outputs[0].finish_reason == "length"
        assert not slow_done, "the slow request finished while its preparation was held"
        assert max(gaps[1:]) < 0.5
        llm.abort(slow_id)  # cancels the held preparation
        deadline = time.monotonic() + 5
        while not slow_done and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow_done and slow_done[-1].finished
        assert slow_done[-1].output.outputs[0].finish_reason == "abort"
        assert llm.metrics().num_requests_running == 0
    finally:
        release.set()
        llm.close()


def test_batches_from_generate_join_the_same_step(qwen_tokenizer) -> None:
    llm = _tiny_llm(qwen_tokenizer)
    try:
        outs = llm.generate([[1, 2, 3], [4, 5], [6, 7, 8, 9]], SamplingParams(max_tokens=3, ignore_eos=True))
        assert [len(o.outputs[0].token_ids) for o in outs] == [3, 3, 3]
        assert llm.stats.batch_sizes[0] == 3
    finally:
        llm.close()


def test_health_follows_the_loop(qwen_tokenizer) -> None:
    llm = _tiny_llm(qwen_tokenizer)
    assert llm.health().ok
    llm.generate([1, 2, 3], SamplingParams(max_tokens=2))
    assert llm.health().ok
    llm.close()
    health = llm.health()
    assert not health.ok and "closed" in health.detail


def test_another_clients_request_is_served_beside_a_big_fan_out(qwen_tokenizer) -> None:
    llm = _tiny_llm(qwen_tokenizer, max_num_seqs=16, num_kv_blocks=512)
    try:
        big_done = threading.Event()
        llm.submit(
            [3, 4, 5],
            SamplingParams(n=16, max_tokens=300, ignore_eos=True, temperature=1.0),
            lambda d: big_done.set() if d.finished else None,
        )
        while llm.metrics().num_requests_running < 16:
            time.sleep(0.005)
        steps_before = llm.metrics().num_steps
        first: list[int] = []

        def sink(delta) -> None:
            if delta.token_ids and not first:
                first.append(llm.metrics().num_steps)

        llm.submit([9, 10, 11], SamplingParams(max_tokens=2, ignore_eos=True), sink)
        deadline = time.monotonic() + 30
        while not first and time.monotonic() < deadline:
            time.sleep(0.005)
        assert first and first[0] - steps_before <= 5
        assert not big_done.is_set()
    finally:
        llm.close()


def test_engine_config_validates_limits() -> None:
    with pytest.raises(Exception, match="max_n"):
        RequestLimits(max_n=0)
    with pytest.raises(Exception, match="compile_time_budget_s"):
        RequestLimits(compile_time_budget_s=0)
    with pytest.raises(Exception, match="limits"):
        EngineConfig(limits={"max_n": 3})  # type: ignore[arg-type]
