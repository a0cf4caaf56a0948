"""Token masks of one grammar: which tokens each matching state allows.

``MaskBuilder.token_mask(sid)`` is the OR over the state's stacks of ``stack_mask``:

* a stack whose top frame is inside a string-like leaf (a byte DFA) takes the leaf's
  per-tokenizer table (``LeafTables``: the tokens that stay inside it) and checks only the
  tokens that leave it part-way against the enclosing context, bucketed by (label, first
  byte) so that a rejected bucket costs one check;
* numbers walk the token trie restricted to the number; counted strings filter a shared
  table by the characters each token completes; object keys go through ``KeyMasks``;
* any other stack is matched against the token trie with pruning.

Every memo here (masks per stack and per state, number and counted-string tables, exit
buckets, popped states) is accounted in ``memo_bytes``; once it would pass ``max_memo_bytes``
they are all dropped together (a mask is ~19 KB for a 152k vocabulary), so a grammar's mask
memory stays bounded however long it is used. Computing a mask runs under a budget (the
compile's for the start state, ``mask_seconds`` of wall time for later states). Not locked
here: callers hold the grammar's lock (``GrammarCore.lock``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .bitmask import ids_to_mask
from .budget import Budget, MaskBudget
from .key_masks import KeyMasks
from .leaf_tables import ExitGroups, LeafTable, LeafTables, leaf_table_nbytes
from .nodes import CountedStringNode, KeyLeafNode, LeafNode, Stack
from .numbers import NumberNode

if TYPE_CHECKING:
    from .grammar import GrammarCore

_ENTRY_BYTES = 150  # a memo entry besides its arrays (dict slot, key tuple, boxed ints)


class MaskBuilder:
    """Masks of one grammar; ``max_memo_bytes`` bounds its memos, ``mask_seconds`` the time a
    mask computed without an explicit budget may take."""

    def __init__(self, core: GrammarCore, tables: LeafTables, max_memo_bytes: int, mask_seconds: float) -> None:
        self.core = core
        self.tables = tables
        self.info = core.info
        self.vocab_size = core.info.vocab_size
        self.max_memo_bytes = max_memo_bytes
        self.mask_seconds = mask_seconds
        self.what = "this grammar"  # names the grammar in mask budget errors
        self.memo_bytes = 0
        self.keys = KeyMasks(self)
        self.stack_masks: dict[Stack, np.ndarray] = {}
        self.set_masks: dict[int, np.ndarray] = {}
        self.number_tables: dict[tuple[int, str], LeafTable] = {}
        self.popped_sids: dict[tuple[Stack, int], int] = {}
        self.counted_insides: dict[tuple[str, int, int, int, int | None], np.ndarray] = {}
        self.counted_exits: dict[tuple[str, int, Stack], tuple[np.ndarray, np.ndarray]] = {}
        self._bucket_index: dict[int, tuple[ExitGroups, dict[tuple[int, int], list[tuple[bytes, np.ndarray]]]]] = {}

    def remember(self, nbytes: int) -> None:
        """Account ``nbytes`` about to be memoised; drops every memo first if they would
        pass ``max_memo_bytes``."""
        if self.memo_bytes + nbytes > self.max_memo_bytes:
            self.clear_memos()
        self.memo_bytes += nbytes

    def clear_memos(self) -> None:
        self.stack_masks.clear()
        self.set_masks.clear()
        self.number_tables.clear()
        self.popped_sids.clear()
        self.counted_insides.clear()
        self.counted_exits.clear()
        self._bucket_index.clear()
        self.keys.clear()
        self.memo_bytes = 0

    def token_mask(self, sid: int, budget: Budget | None = None) -> np.ndarray:
        """Packed uint32 mask of the (non-EOS) tokens allowed from state ``sid``, computed
        under ``budget`` (default: ``mask_seconds`` from now) unless memoised."""
        m = self.set_masks.get(sid)
        if m is None:
            if budget is None:
                budget = MaskBudget(self.mask_seconds, self.what)
            what = f"the token mask of state {sid}"
            stacks = list(self.core.sets[sid])
            m = self.stack_mask(stacks[0], budget, what).copy()
            for s in stacks[1:]:
                budget.tick(what)
                m |= self.stack_mask(s, budget, what)
            budget.check(what)  # a mask computed past the deadline still fails (ticks are coarse)
            self.remember(m.nbytes + _ENTRY_BYTES)
            self.set_masks[sid] = m
        return m

    def stack_mask(self, stack: Stack, budget: Budget, what: str) -> np.ndarray:
        m = self.stack_masks.get(stack)
        if m is not None:
            return m
        (nid, local), rest = stack
        node = self.core.nodes[nid]
        if rest is None:
            m = ids_to_mask(self.walk(self.core.intern(frozenset([stack])), budget, what), self.vocab_size)
        elif isinstance(node, CountedStringNode):
            m = self.counted_mask(node, local, rest, budget, what)
        elif (
            isinstance(node, KeyLeafNode)
            and node.decomposable
            and (km := self.keys.key_mask(node, local, rest, budget, what)) is not None
        ):
            m = km
        elif isinstance(node, (LeafNode, NumberNode)):
            if isinstance(node, NumberNode):
                inside, exits = self.number_table(nid, node, local, budget, what)
            else:
                inside, exits = self.tables.dfa_table(node.dfa, local, budget, what)
            m = inside.copy()
            lab = node.result(local)
            if lab is not None:
                m |= self.stack_mask(self.core.popped(rest, lab), budget, what)
            ok = self.viable_exit_ids(rest, exits, budget, what)
            if ok:
                m |= ids_to_mask(np.concatenate(ok), self.vocab_size)
        else:
            m = ids_to_mask(self.walk(self.core.intern(frozenset([stack])), budget, what), self.vocab_size)
        self.remember(m.nbytes + _ENTRY_BYTES)
        self.stack_masks[stack] = m
        return m

    def viable_exit_ids(
        self, rest: Stack, exits: ExitGroups, budget: Budget, what: str, label_override: int | None = None
    ) -> list[np.ndarray]:
        """The id arrays of the exit groups whose suffix the parent accepts; groups are
        bucketed by (label, first byte) and a bucket is skipped when the parent rejects it."""
        ok: list[np.ndarray] = []
        for (label, first), groups in self._exit_buckets(exits).items():
            budget.tick(what, len(groups))
            if label_override is not None:
                label = label_override
            if not self.exit_viable(rest, label, bytes([first])):
                continue
            for suffix, ids in groups:
                if len(suffix) == 1 or self.exit_viable(rest, label, suffix):
                    ok.append(ids)
        return ok

    def _exit_buckets(self, exits: ExitGroups) -> dict[tuple[int, int], list[tuple[bytes, np.ndarray]]]:
        hit = self._bucket_index.get(id(exits))
        if hit is not None and hit[0] is exits:
            return hit[1]
        buckets: dict[tuple[int, int], list[tuple[bytes, np.ndarray]]] = {}
        for label, suffix, ids in exits:
            buckets.setdefault((label, suffix[0]), []).append((suffix, ids))
        self.remember(_ENTRY_BYTES * (1 + len(exits)))
        self._bucket_index[id(exits)] = (exits, buckets)
        return buckets

    def exit_viable(self, rest: Stack, label: int, suffix: bytes) -> bool:
        """Can the parent (after its child ended with ``label``) take ``suffix``?"""
        key = (rest, label)
        psid = self.popped_sids.get(key)
        if psid is None:
            psid = self.core.intern(frozenset([self.core.popped(rest, label)]))
            self.remember(_ENTRY_BYTES)
            self.popped_sids[key] = psid
        return self.core.step_bytes(psid, suffix) >= 0

    def number_table(self, nid: int, node: NumberNode, local: str, budget: Budget, what: str) -> LeafTable:
        """Tokens a number consumes entirely from ``local``, and those that end it part-way,
        by a trie walk restricted to the number (a few digit tokens)."""
        key = (nid, local)
        hit = self.number_tables.get(key)
        if hit is not None:
            return hit
        idx = self.info.index
        cs, cb, cn, ts, ti = idx.child_start, idx.child_byte, idx.child_node, idx.tok_start, idx.tok_ids
        vocab = self.info.vocab
        inside: list[int] = []
        groups: dict[bytes, list[int]] = {}
        todo = [(0, local, 0)]
        while todo:
            n, loc, d = todo.pop()
            budget.tick(what, 1 + cs[n + 1] - cs[n])
            ends_here = d > 0 and node.result(loc) is not None
            for k in range(cs[n], cs[n + 1]):
                b, c = cb[k], cn[k]
                if ends_here:
                    for tid in idx.subtree_tokens(c):
                        groups.setdefault(vocab[tid][d:], []).append(tid)
                nxt = node.step(loc, b)
                if not nxt:
                    continue
                inside.extend(ti[ts[c] : ts[c + 1]])
                if cs[c] != cs[c + 1]:
                    todo.append((c, nxt[0][1], d + 1))
        result = (
            ids_to_mask(inside, self.vocab_size),
            [(0, suffix, np.array(ids, dtype=np.int64)) for suffix, ids in groups.items()],
        )
        self.remember(leaf_table_nbytes(result))
        self.number_tables[key] = result
        return result

    def counted_mask(
        self, node: CountedStringNode, local: tuple[int, int], rest: Stack, budget: Budget, what: str
    ) -> np.ndarray:
        """Mask of a counted string: per-state tables shared by every count, filtered by the
        characters each token completes; exits checked once per (state, context)."""
        q, c = local
        ids, need, closed, exits = self.tables.counted_base(node.dfa, q, node.boundary, budget, what)
        ikey = (node.dfa.key, q, c, node.min_len, node.max_len)
        inside = self.counted_insides.get(ikey)
        if inside is None:
            # tokens ending inside the string need room for their characters; tokens ending
            # with the closing quote also need the minimum length reached
            sel = ~closed | (need + c >= node.min_len)
            if node.max_len is not None:
                sel &= need + c <= node.max_len
            inside = ids_to_mask(ids[sel], self.vocab_size)
            self.remember(inside.nbytes + _ENTRY_BYTES)
            self.counted_insides[ikey] = inside
        m = inside.copy()
        lab = node.result(local)
        if lab is not None:
            m |= self.stack_mask(self.core.popped(rest, lab), budget, what)
        ekey = (node.dfa.key, q, rest)
        viable = self.counted_exits.get(ekey)
        if viable is None:
            first_ok: dict[tuple[int, int], bool] = {}
            ok: list[tuple[np.ndarray, np.ndarray]] = []
            for label, suffix, e_ids, e_chars in exits:
                budget.tick(what)
                fk = (label, suffix[0])
                good = first_ok.get(fk)
                if good is None:
                    good = first_ok[fk] = self.exit_viable(rest, label, suffix[:1])
                if good and (len(suffix) == 1 or self.exit_viable(rest, label, suffix)):
                    ok.append((e_ids, e_chars))
            viable = (
                np.concatenate([a for a, _ in ok]) if ok else np.zeros(0, np.int64),
                np.concatenate([b for _, b in ok]) if ok else np.zeros(0, np.int32),
            )
            self.remember(viable[0].nbytes + viable[1].nbytes + _ENTRY_BYTES)
            self.counted_exits[ekey] = viable
        e_ids, e_chars = viable
        if e_ids.size:
            total = e_chars + c
            sel = total >= node.min_len
            if node.max_len is not None:
                sel &= total <= node.max_len
            if sel.any():
                m |= ids_to_mask(e_ids[sel], self.vocab_size)
        return m

    def walk(self, sid: int, budget: Budget, what: str) -> list[int]:
        """Token ids accepted from ``sid``, by a pruned depth-first walk of the token trie."""
        idx = self.info.index
        cs, cb, cn, ts, ti = idx.child_start, idx.child_byte, idx.child_node, idx.tok_start, idx.tok_ids
        memo = self.core.step_memo
        step = self.core.step
        allowed: list[int] = []
        todo = [(0, sid)]
        while todo:
            n, s = todo.pop()
            budget.tick(what, 1 + cs[n + 1] - cs[n])
            base = s << 8
            for k in range(cs[n], cs[n + 1]):
                b = cb[k]
                t = memo.get(base | b)
                if t is None:
                    t = step(s, b)
                if t < 0:
                    continue
                c = cn[k]
                if ts[c] != ts[c + 1]:
                    allowed.extend(ti[ts[c] : ts[c + 1]])
                if cs[c] != cs[c + 1]:
                    todo.append((c, t))
        return allowed
