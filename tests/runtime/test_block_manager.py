"""Block manager: allocation, reference counts, prefix caching, LRU eviction, accounting."""

from __future__ import annotations

import random

import pytest

from tritonlm.runtime.block_manager import BlockManager
from tritonlm.runtime.request import Request
from tritonlm.runtime.sampling_params import SamplingParams
from tritonlm.runtime.scheduler import Scheduler


def test_allocate_and_free_roundtrip() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    assert bm.allocate("a", [], 9)  # 3 blocks
    assert len(bm.block_table("a")) == 3
    assert bm.num_free_blocks == 5
    assert bm.append_slots("a", 12)  # still 3 blocks
    assert len(bm.block_table("a")) == 3
    assert bm.append_slots("a", 13)
    assert len(bm.block_table("a")) == 4
    assert not bm.allocate("b", [], 17)  # needs 5, only 4 free: nothing changes
    assert not bm.has("b") and bm.num_free_blocks == 4
    bm.check_invariants()
    bm.free("a")
    assert bm.num_free_blocks == 8
    bm.check_invariants()


def test_prefix_hits_need_the_whole_chain_and_leave_the_last_token() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    tokens = list(range(100, 111))  # 11 tokens: blocks [0:4], [4:8] full, [8:11] partial
    assert bm.allocate("a", bm.find_cached_prefix(tokens), len(tokens))
    assert bm.find_cached_prefix(tokens) == []  # nothing registered before compute
    bm.register_full_blocks("a", tokens, 11)
    table = bm.block_table("a")
    assert bm.find_cached_prefix(tokens) == table[:2]
    # same first block, different second: only the first hits
    other = [*tokens[:4], 7, 7, 7, 7, 7]
    assert bm.find_cached_prefix(other) == table[:1]
    # a different first block breaks the chain even if the second block's tokens match
    assert bm.find_cached_prefix([1, 2, 3, 4, *tokens[4:]]) == []
    # exactly 8 tokens: the last token must be computed, so only the first block is reused
    assert bm.find_cached_prefix(tokens[:8]) == table[:1]
    assert bm.find_cached_prefix(tokens[:9]) == table[:2]


def test_shared_blocks_are_reference_counted() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    tokens = list(range(10))
    bm.allocate("a", [], 10)
    bm.register_full_blocks("a", tokens, 10)
    hits = bm.find_cached_prefix([*tokens, 99])
    assert len(hits) == 2
    assert bm.allocate("b", hits, 11)
    assert bm.block_table("b")[:2] == bm.block_table("a")[:2]
    assert [bm.blocks[b].ref_count for b in hits] == [2, 2]
    bm.free("a")
    assert [bm.blocks[b].ref_count for b in hits] == [1, 1]
    bm.check_invariants()
    bm.free("b")
    bm.check_invariants()
    assert all(b.ref_count == 0 for b in bm.blocks)
    # the cached blocks survive the frees and are found again
    assert bm.find_cached_prefix([*tokens, 5]) == hits


def test_lru_eviction_takes_the_least_recently_freed_cached_block_first() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    a, b = [1, 2, 3, 4, 5], [6, 7, 8, 9, 10]
    bm.allocate("a", [], 5)
    bm.register_full_blocks("a", a, 5)
    bm.free("a")
    a_table = [0, 1, 2]
    # b takes the never-used block 3, a's partial block 2, then evicts a's tail block 1, not its head
    bm.allocate("b", [], 5)
    assert bm.block_table("b") == [3, 2, 1]
    bm.register_full_blocks("b", b, 5)
    assert bm.find_cached_prefix(a) == a_table[:1]
    bm.free("b")
    bm.check_invariants()
    assert len(bm.find_cached_prefix(b)) == 2
    # allocating everything evicts every cached block
    assert bm.allocate("c", [], 8)
    assert bm.find_cached_prefix(b) == []
    bm.free("c")
    bm.check_invariants()
    assert bm.num_free_blocks == 4


def test_prefix_caching_can_be_disabled() -> None:
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    bm.allocate("a", [], 6)
    bm.register_full_blocks("a", [1, 2, 3, 4, 5, 6], 6)
    assert bm.find_cached_prefix([1, 2, 3, 4, 5, 6, 7]) == []


def _request(request_id: str, prompt_len: int, max_tokens: int, order: int) -> Request:
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    rng = random.Random(order)
    # few distinct prefixes so that prefix hits, shared blocks and evictions all happen
    prompt = [order % 3] * (prompt_len // 2) + [rng.randrange(50) for _ in range(prompt_len - prompt_len // 2)]
    return Request(
        request_id=request_id,
        group_id=request_id,
        index=0,
        token_ids=prompt,
        num_prompt_tokens=prompt_len,
        params=params,
        sampling_seed=order,
        arrival_order=order,
        max_total_tokens=prompt_len + max_tokens,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_thousand_random_requests_with_aborts_leave_no_leak(seed: int) -> None:
    """Scheduler + block manager driven like the engine (with fake tokens): 1,000 random
    requests, random aborts, a cache small enough to force preemptions; at the end every
    block is free or cached with zero references."""
    rng = random.Random(seed)
    bm = BlockManager(num_blocks=40, block_size=4)
    sched = Scheduler(bm, max_num_seqs=12, max_num_batched_tokens=48)
    live: dict[str, Request] = {}
    submitted = finished = 0
    while submitted < 1000 or sched.has_unfinished:
        for _ in range(rng.randrange(0, 4)):
            if submitted < 1000:
                req = _request(f"r{submitted}", rng.randrange(1, 60), rng.randrange(1, 30), submitted)
                sched.add(req)
                live[req.request_id] = req
                submitted += 1
        if live and rng.random() < 0.1:
            victim = rng.choice(list(live.values()))
            sched.finish(victim, "abort")
            del live[victim.request_id]
            finished += 1
        out = sched.schedule()
        assert out.total_tokens <= 48
        assert len(out.num_scheduled_tokens) <= 12
        for request_id, n in out.num_scheduled_tokens.items():
            req = out.requests[request_id]
            assert len(bm.block_table(request_id)) * 4 >= req.num_computed_tokens + n
        sched.mark_computed(out)
        for req in list(out.requests.values()):
            if req.num_computed_tokens == req.num_tokens:
                req.token_ids.append(rng.randrange(50))
                if req.num_tokens >= req.max_total_tokens:
                    sched.finish(req, "length")
                    del live[req.request_id]
                    finished += 1
        bm.check_invariants()
    assert finished == 1000
    assert sched.num_preemptions > 0, "the cache was meant to be too small for the load"
    assert bm.num_cache_hit_blocks > 0
    bm.check_invariants()
    assert all(b.ref_count == 0 for b in bm.blocks)
    assert bm.num_free_blocks == bm.num_blocks
