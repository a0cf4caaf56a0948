"""Scheduler: token budget, chunked prefill alongside decodes, joining, preemption order."""

from __future__ import annotations

from tritonlm.runtime.block_manager import BlockManager
from tritonlm.runtime.request import Request, RequestStatus
from tritonlm.runtime.sampling_params import SamplingParams
from tritonlm.runtime.scheduler import Scheduler, SchedulerOutput


def _req(request_id: str, prompt_len: int, order: int = 0, max_tokens: int = 100) -> Request:
    return Request(
        request_id=request_id,
        group_id=request_id,
        index=0,
        token_ids=[7 + order] * prompt_len,
        num_prompt_tokens=prompt_len,
        params=SamplingParams(max_tokens=max_tokens, temperature=0),
        sampling_seed=0,
        arrival_order=order,
        max_total_tokens=prompt_len + max_tokens,
    )


def _advance(sched: Scheduler, out: SchedulerOutput) -> None:
    """What the engine does after the runner: mark computed, append one token where sampled."""
    sched.mark_computed(out)
    for req in out.requests.values():
        if req.num_computed_tokens == req.num_tokens:
            req.token_ids.append(1)


def test_chunked_prefill_shares_steps_with_decodes() -> None:
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    a = _req("a", 3)
    sched.add(a)
    out = sched.schedule()
    assert out.num_scheduled_tokens == {"a": 3}
    _advance(sched, out)
    long = _req("long", 25, order=1)
    sched.add(long)
    # a decodes (1 token) and the long prompt takes the rest of the budget, chunk by chunk
    chunks = []
    while long.num_computed_tokens < long.num_prompt_tokens:
        out = sched.schedule()
        assert out.num_scheduled_tokens["a"] == 1
        assert out.total_tokens <= 10
        chunks.append(out.num_scheduled_tokens["long"])
        _advance(sched, out)
    assert chunks == [9, 9, 7]
    out = sched.schedule()
    assert out.num_scheduled_tokens == {"a": 1, "long": 1}


def test_new_requests_join_at_the_next_step_and_max_num_seqs_holds() -> None:
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    sched.add(_req("a", 5))
    _advance(sched, out := sched.schedule())
    assert list(out.num_scheduled_tokens) == ["a"]
    sched.add(_req("b", 6, 1))
    sched.add(_req("c", 6, 2))
    out = sched.schedule()
    assert out.num_scheduled_tokens == {"a": 1, "b": 6}  # c waits: max_num_seqs=2
    _advance(sched, out)
    sched.finish(out.requests["a"], "stop")
    out = sched.schedule()
    assert out.num_scheduled_tokens == {"b": 1, "c": 6}


def test_out_of_blocks_preempts_the_newest_and_requeues_it_first() -> None:
    bm = BlockManager(6, 4)  # 24 slots
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    a, b, c = _req("a", 8, 0), _req("b", 7, 1), _req("c", 4, 2)
    for r in (a, b, c):
        sched.add(r)
    out = sched.schedule()
    assert out.num_scheduled_tokens == {"a": 8, "b": 7, "c": 4}
    assert bm.num_free_blocks == 1
    _advance(sched, out)  # a: 9 tokens (needs a 3rd block), b: 8, c: 5 (needs a 2nd block)
    out = sched.schedule()
    # a takes the last free block; c (the newest) is preempted for b... b fits in its 2 blocks
    assert out.num_scheduled_tokens == {"a": 1, "b": 1}
    assert out.preempted == ["c"]
    assert c.status is RequestStatus.WAITING and c.num_computed_tokens == 0
    assert sched.waiting[0] is c
    bm.check_invariants()
    _advance(sched, out)
    sched.finish(a, "stop")
    out = sched.schedule()
    # c comes back; its full prompt block survived in the prefix cache, so only the token it
    # had generated is recomputed
    assert out.num_scheduled_tokens["c"] == 1
    assert c.num_computed_tokens == 4 and c.num_tokens == 5


def test_two_growing_requests_preempt_the_newer() -> None:
    bm = BlockManager(4, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    a, b = _req("a", 7, 0), _req("b", 7, 1)
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    assert out.num_scheduled_tokens == {"a": 7, "b": 7}
    _advance(sched, out)
    _advance(sched, out := sched.schedule())
    out = sched.schedule()  # both need a third block; b is preempted, a goes on
    assert out.preempted == ["b"] and out.num_scheduled_tokens == {"a": 1}
    bm.check_invariants()


def test_siblings_wait_for_the_first_prefill() -> None:
    bm = BlockManager(32, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=6)
    first = _req("g", 13)
    second = _req("g#1", 13)
    second.waits_for = first
    sched.add(first)
    sched.add(second)
    steps = 0
    while not first.is_prefilled:
        out = sched.schedule()
        assert "g#1" not in out.num_scheduled_tokens
        _advance(sched, out)
        steps += 1
    assert steps == 3
    out = sched.schedule()
    # the sibling reuses the 3 full prompt blocks and computes only the last token
    assert out.num_scheduled_tokens["g#1"] == 1
    assert bm.block_table("g#1")[:3] == bm.block_table("g")[:3]
    assert [bm.blocks[b].ref_count for b in bm.block_table("g")[:3]] == [2, 2, 2]


def test_an_older_prefill_does_not_starve_newer_decodes() -> None:
    bm = BlockManager(64, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=8)
    # running: an older request mid-prefill (8 of 40 computed), then a newer one decoding
    long, short = _req("long", 40, 0), _req("short", 2, 1)
    for req, computed in ((long, 8), (short, 2)):
        assert bm.allocate(req.request_id, [], computed)
        req.num_computed_tokens = computed
        req.status = RequestStatus.RUNNING
        sched.running.append(req)
    short.token_ids.append(5)  # its first sampled token, to decode now
    out = sched.schedule()
    assert out.num_scheduled_tokens == {"short": 1, "long": 7}
    bm.check_invariants()
