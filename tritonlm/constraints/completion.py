"""Completion search: a short byte string that takes a matching state to one that can end.

Used to close an output before its token budget runs out. Breadth-first over bytes with a
beam that keeps the states with the least open work (ties: closing bytes first); a greedy
dive (beam 1) first, wider beams if it fails, each bounded in byte steps. Found suffixes are
memoised per state (the memo is dropped whole once it holds ``_COMPLETION_MEMO_MAX``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .nodes import ArrayNode, CountedStringNode, Frame, KeyLeafNode, LeafNode, ObjectNode, Stack
from .numbers import NumberNode

if TYPE_CHECKING:
    from .grammar import GrammarCore

_COMPLETION_BEAMS = (1, 8, 48)  # beam widths the completion search tries in turn
_COMPLETION_MAX_BYTES = 1024
_COMPLETION_MAX_STEPS = 60_000  # byte steps one beam may try (bounds the search's time)
_COMPLETION_MEMO_MAX = 100_000
# bytes the completion search tries, best first: closers, separators, what keys, numbers,
# literals and common formats need; then the rest of printable ASCII as a fallback
_COMPLETION_BYTES = b'"}],:0{[' + bytes(range(0x61, 0x7B)) + b"123456789-.@/_T" + bytes(range(0x41, 0x5B))
_COMPLETION_BYTE_ORDER = tuple(dict.fromkeys(_COMPLETION_BYTES + bytes(range(0x20, 0x7F))))


class CompletionSearch:
    """Completions for the states of one grammar (``core``)."""

    def __init__(self, core: GrammarCore) -> None:
        self.core = core
        self.memo: dict[int, bytes | None] = {}

    @property
    def nbytes(self) -> int:
        """A rough size of the memo (entries hold a suffix each; 120 bytes besides it)."""
        return 160 * len(self.memo)

    def search(self, sid: int) -> bytes | None:
        """A short byte string taking state ``sid`` to a state that can end (b"" if it can end
        already); None if none is found.

        Breadth-first over bytes with a beam that keeps the states with the least open work
        (ties: closing bytes first); a greedy dive (beam 1) first, wider beams if it fails,
        each bounded by ``_COMPLETION_MAX_STEPS`` byte steps. Not always the shortest, and it
        can miss where a completion must spell long key names through a crowd of alternatives.
        Every state on a found path is memoised with its suffix.
        """
        memo = self.memo
        if sid in memo:
            return memo[sid]
        if len(memo) >= _COMPLETION_MEMO_MAX:
            memo.clear()
        for beam in _COMPLETION_BEAMS:
            found = self._completion_search(sid, beam)
            if found is not None:
                return found
        memo[sid] = None
        return None

    def _completion_search(self, sid: int, beam: int) -> bytes | None:
        memo, core = self.memo, self.core
        parents: dict[int, tuple[int, int]] = {sid: (-1, -1)}
        level = [sid]
        found = -1
        work = 0
        for _ in range(_COMPLETION_MAX_BYTES):
            for s in level:
                if core.can_end(s) or memo.get(s) is not None:
                    found = s
                    break
            if found >= 0 or not level or work > _COMPLETION_MAX_STEPS:
                break
            work += len(level) * len(_COMPLETION_BYTE_ORDER)
            # states are marked seen only once kept, so one pruned here can come back later
            candidates: dict[int, tuple[int, int, int, int]] = {}  # state -> (work, rank, parent, byte)
            for s in level:
                for rank, b in enumerate(_COMPLETION_BYTE_ORDER):
                    t = core.step(s, b)
                    if t >= 0 and t not in parents and t not in candidates:
                        candidates[t] = (self._open_work(t), rank, s, b)
            kept = sorted(candidates, key=candidates.__getitem__)[:beam]
            for t in kept:
                parents[t] = candidates[t][2:]
            level = kept
        if found < 0:
            return None
        path: list[int] = []
        s = found
        while s != sid:
            s, b = parents[s]
            path.append(b)
        path.reverse()
        tail = b"" if core.can_end(found) else memo[found] or b""
        s = sid
        for i, b in enumerate(path):
            memo[s] = bytes(path[i:]) + tail
            s = core.step(s, b)
        memo[s] = tail
        return memo[sid]

    def _open_work(self, sid: int) -> int:
        """A rough count of what state ``sid`` must still close or write, fewest over its
        stacks: one per open node, three per missing required key or array item, the bytes a
        string, key or literal needs to reach an accepting state, and the length of a number
        being written (numbers grow without bound otherwise)."""
        best = 1 << 30
        for top in self.core.sets[sid]:
            work = 0
            stack: Stack | None = top
            while stack is not None:
                (nid, local), stack = stack
                node = self.core.nodes[nid]
                work += 1
                if isinstance(node, ObjectNode) and local[0] >= 0:
                    work += 3 * bin(node.required_mask & ~local[1]).count("1")
                elif isinstance(node, ArrayNode) and local[0] >= 0:
                    work += 3 * max(0, node.min_items - local[1])
                elif isinstance(node, NumberNode):
                    work += len(local) + (node.result(local) is None)
                elif isinstance(node, CountedStringNode):
                    work += node.dfa.accept_distance()[local[0]] + max(0, node.min_len - local[1])
                elif isinstance(node, KeyLeafNode) and stack is not None:
                    work += node.dfa.accept_distance(self._missing_key_labels(stack[0]))[local]
                elif isinstance(node, LeafNode):
                    work += node.dfa.accept_distance()[local]
            best = min(best, work)
        return best

    def _missing_key_labels(self, parent: Frame) -> frozenset[int] | None:
        """The key-leaf labels naming a required key the parent object still misses (None
        when it misses none: any key will do)."""
        nid, (_, seen, *_) = parent
        node = self.core.nodes[nid]
        if not isinstance(node, ObjectNode):
            return None
        missing = node.required_mask & ~seen
        if not missing:
            return None
        _, outcomes = node.key_leaf_for_seen(seen)
        labels = frozenset(lab for lab, (index, _) in enumerate(outcomes) if index >= 0 and missing >> index & 1)
        return labels or None
