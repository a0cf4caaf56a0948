"""KV block bookkeeping: free list, reference counts, block tables, prefix caching. No torch.

Every block is in exactly one of three states:

* **free**: ``ref_count == 0`` and no cached hash; on the free list.
* **cached**: ``ref_count == 0`` but holds a full block of known tokens under its hash; on the
  LRU list, reusable by a request with the same prefix until evicted for a new allocation.
* **in use**: ``ref_count > 0``; in the block table of that many requests.

A full block's hash chains the previous block's hash with its token ids, so a hit on block
``i`` implies the whole prefix ``0 .. i`` matches.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None  # set once the block is full and registered
    token_ids: tuple[int, ...] | None = None  # the tokens behind block_hash (guards against collisions)


def hash_block(prev_hash: int | None, token_ids: tuple[int, ...]) -> int:
    return hash((prev_hash, token_ids))


class BlockManager:
    """Fixed-size blocks of ``block_size`` token slots, handed out to requests by id."""

    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks={num_blocks}, block_size={block_size}: must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; oldest first
        self._hash_to_block: dict[int, int] = {}
        self._tables: dict[str, list[int]] = {}
        self._num_hashed: dict[str, int] = {}  # request -> leading blocks already registered
        self.num_cache_hit_blocks = 0

    # ---- queries -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation may take now (free or cached-but-unreferenced)."""
        return len(self._free) + len(self._evictable)

    def block_table(self, request_id: str) -> list[int]:
        return self._tables[request_id]

    def has(self, request_id: str) -> bool:
        return request_id in self._tables

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def find_cached_prefix(self, token_ids: Sequence[int]) -> list[int]:
        """Block ids caching the longest prefix of ``token_ids`` made of full blocks.

        At most ``len(token_ids) - 1`` tokens are matched: the last token is always computed
        (its logits are needed), and it must go to a block this request owns alone.
        """
        if not self.enable_prefix_caching:
            return []
        hits: list[int] = []
        prev: int | None = None
        bs = self.block_size
        for start in range(0, len(token_ids) - 1 - bs + 1, bs):
            chunk = tuple(token_ids[start : start + bs])
            h = hash_block(prev, chunk)
            block_id = self._hash_to_block.get(h)
            if block_id is None or self.blocks[block_id].token_ids != chunk:
                break
            hits.append(block_id)
            prev = h
        return hits

    # ---- allocation ----------------------------------------------------------------------
    def allocate(self, request_id: str, cached_blocks: list[int], num_tokens: int) -> bool:
        """Give a new request the ``cached_blocks`` (from :meth:`find_cached_prefix`) plus fresh
        blocks up to ``num_tokens`` slots. Returns False (and changes nothing) if they do not fit."""
        if request_id in self._tables:
            raise KeyError(f"request {request_id!r} already holds blocks")
        num_new = self.blocks_for(num_tokens) - len(cached_blocks)
        revived = sum(1 for b in cached_blocks if self.blocks[b].ref_count == 0)
        if num_new + revived > self.num_free_blocks:
            return False
        table: list[int] = []
        for block_id in cached_blocks:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._evictable[block_id]
            block.ref_count += 1
            table.append(block_id)
        self.num_cache_hit_blocks += len(cached_blocks)
        for _ in range(max(num_new, 0)):
            table.append(self._take_fresh_block())
        self._tables[request_id] = table
        self._num_hashed[request_id] = len(cached_blocks)
        return True

    def append_slots(self, request_id: str, num_tokens: int) -> bool:
        """Grow the request's table to hold ``num_tokens`` slots. False (nothing changed) if out of blocks."""
        table = self._tables[request_id]
        num_new = self.blocks_for(num_tokens) - len(table)
        if num_new <= 0:
            return True
        if num_new > self.num_free_blocks:
            return False
        for _ in range(num_new):
            table.append(self._take_fresh_block())
        return True

    def _take_fresh_block(self) -> int:
        if self._free:
            block_id = self._free.popleft()
        else:
            block_id, _ = self._evictable.popitem(last=False)  # least recently used
            block = self.blocks[block_id]
            if block.block_hash is not None and self._hash_to_block.get(block.block_hash) == block_id:
                del self._hash_to_block[block.block_hash]
        block = self.blocks[block_id]
        block.block_hash = None
        block.token_ids = None
        block.ref_count = 1
        return block_id

    def register_full_blocks(self, request_id: str, token_ids: Sequence[int], num_computed_tokens: int) -> None:
        """Publish the request's blocks that are now full of computed tokens for prefix reuse.

        ``token_ids`` are the request's tokens (prompt + output); the first
        ``num_computed_tokens`` of them have their k/v stored in the cache.
        """
        if not self.enable_prefix_caching:
            return
        table = self._tables[request_id]
        done = self._num_hashed[request_id]
        full = min(num_computed_tokens // self.block_size, len(table))
        if full <= done:
            return
        bs = self.block_size
        prev = self.blocks[table[done - 1]].block_hash if done else None
        for i in range(done, full):
            chunk = tuple(token_ids[i * bs : (i + 1) * bs])
            h = hash_block(prev, chunk)
            block = self.blocks[table[i]]
            if block.block_hash is None:
                block.block_hash = h
                block.token_ids = chunk
                # keep an existing entry (another block already caches these tokens)
                self._hash_to_block.setdefault(h, block.block_id)
            prev = h
        self._num_hashed[request_id] = full

    def free(self, request_id: str) -> None:
        """Release the request's blocks (no-op if it holds none). Cached blocks stay reusable."""
        table = self._tables.pop(request_id, None)
        self._num_hashed.pop(request_id, None)
        if table is None:
            return
        # last blocks first, so a prefix outlives its tails in the LRU order
        for block_id in reversed(table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                if block.block_hash is not None and self._hash_to_block.get(block.block_hash) == block_id:
                    self._evictable[block_id] = None
                else:
                    block.block_hash = None
                    block.token_ids = None
                    self._free.append(block_id)

    def check_invariants(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (tests)."""
        refs = [0] * self.num_blocks
        for table in self._tables.values():
            for block_id in table:
                refs[block_id] += 1
        for block in self.blocks:
            assert block.ref_count == refs[block.block_id], f"block {block.block_id}: ref_count mismatch"
        free, evictable = set(self._free), set(self._evictable)
        assert len(free) == len(self._free), "duplicate on the free list"
        assert not free & evictable
        for block in self.blocks:
            in_use = block.ref_count > 0
            assert in_use + (block.block_id in free) + (block.block_id in evictable) == 1, (
                f"block {block.block_id} is in more or fewer than one state"
            )
        for h, block_id in self._hash_to_block.items():
            assert self.blocks[block_id].block_hash == h
