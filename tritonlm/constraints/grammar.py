"""The compiled grammar: nodes, alternatives, and the byte/token machinery over them.

``GrammarCore`` owns the node list and the *alternatives* (an alternative is a set of nodes
any of which may match a value: ``anyOf``, type lists, enums). Matching state is an interned
set of stacks (see ``nodes``); ``step`` moves a state over one byte (memoised per (state,
byte)), and ``token_mask`` gives the packed bitmask of tokens allowed from a state:

* for a stack whose top frame is inside a string-like leaf (a byte DFA), the tokens that stay
  inside the leaf are computed once per (DFA, DFA state) for the whole vocabulary with numpy,
  and only the tokens that leave the leaf part-way (a few hundred suffixes after a closing
  quote) are checked against the enclosing context;
* any other stack is matched against the token trie with pruning (few tokens survive the
  first bytes at structural positions);
* masks are memoised per stack and per state.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .automata import ByteDFA
from .nodes import STAY, ArrayNode, CountedStringNode, KeyLeafNode, Layout, LeafNode, Node, NumberNode, ObjectNode
from .tokenizer_info import TokenizerInfo, VocabIndex

Stack = tuple  # ((node_id, local), rest | None)

LeafTable = tuple[np.ndarray, list[tuple[int, bytes, np.ndarray]]]
_LEAF_TABLES: dict[tuple[str, int, int], LeafTable] = {}
_LEAF_TABLES_MAX = 4096
_MASK_CACHE_MAX = 2048  # memoised masks per grammar (per stack and per state) before starting over
_COMPLETION_BEAMS = (1, 8, 48)  # beam widths the completion search tries in turn
_COMPLETION_MAX_BYTES = 1024
_COMPLETION_MAX_STEPS = 60_000  # byte steps one beam may try (bounds the search's time)
_COMPLETION_MEMO_MAX = 100_000
# bytes the completion search tries, best first: closers, separators, what keys, numbers,
# literals and common formats need; then the rest of printable ASCII as a fallback
_COMPLETION_BYTES = b'"}],:0{[' + bytes(range(0x61, 0x7B)) + b"123456789-.@/_T" + bytes(range(0x41, 0x5B))
_COMPLETION_BYTE_ORDER = tuple(dict.fromkeys(_COMPLETION_BYTES + bytes(range(0x20, 0x7F))))
_WALK_MAX_TOKENS = 3000  # DFA states letting fewer tokens start are matched by trie walk, others with numpy


def num_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def ids_to_mask(ids: Iterable[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """Packed uint32 mask (bit j of word w = token 32*w + j) with ``ids`` set."""
    bits = np.zeros(num_words(vocab_size) * 32, dtype=bool)
    arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
    if arr.size:
        bits[arr] = True
    return np.packbits(bits, bitorder="little").view(np.uint32)


class GrammarCore:
    def __init__(self, info: TokenizerInfo, layout: Layout) -> None:
        self.info = info
        self.layout = layout
        self.nodes: list[Node] = []
        self.alt_members: list[list[tuple[str, int]]] = []
        self.alts: list[tuple[int, ...]] = []
        self.finalized = False
        # matching state
        self.sets: list[frozenset] = []
        self.set_ids: dict[frozenset, int] = {}
        self.step_memo: dict[int, int] = {}
        self.stack_masks: dict[Stack, np.ndarray] = {}
        self.set_masks: dict[int, np.ndarray] = {}
        self.end_memo: dict[int, bool] = {}
        self.key_tables: dict[tuple[int, int], LeafTable] = {}
        self.number_tables: dict[tuple[int, str], LeafTable] = {}
        self.popped_sids: dict[tuple[Stack, int], int] = {}
        self.counted_insides: dict[tuple, np.ndarray] = {}
        self.counted_exits: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._exit_index: dict[int, tuple[list, dict[int, list[int]]]] = {}
        self._bucket_index: dict[int, tuple[list, dict]] = {}
        self._subtree_memo: dict[tuple[int, int], list[tuple[bytes, np.ndarray]]] = {}
        self.completion_memo: dict[int, bytes | None] = {}

    # -- building -------------------------------------------------------------------------
    def add_node(self, node: Node) -> int:
        node.core = self
        self.nodes.append(node)
        return len(self.nodes) - 1

    def new_alt(self, members: Iterable[tuple[str, int]] = ()) -> int:
        self.alt_members.append(list(members))
        return len(self.alt_members) - 1

    def node_alt(self, node: Node) -> int:
        return self.new_alt([("n", self.add_node(node))])

    def finalize(self) -> None:
        """Flatten alternatives, compute which nodes can match anything (least fixpoint),
        and drop the ones that cannot."""
        flat: list[tuple[int, ...]] = []
        for aid in range(len(self.alt_members)):
            seen_alts = {aid}
            nodes: list[int] = []
            todo = [aid]
            while todo:
                a = todo.pop()
                for kind, x in self.alt_members[a]:
                    if kind == "n":
                        if x not in nodes:
                            nodes.append(x)
                    elif x not in seen_alts:
                        seen_alts.add(x)
                        todo.append(x)
            flat.append(tuple(nodes))
        sat: set[int] = set()

        def sat_alt(a: int) -> bool:
            return any(n in sat for n in flat[a])

        changed = True
        while changed:
            changed = False
            for nid, node in enumerate(self.nodes):
                if nid not in sat and node.satisfiable(sat_alt):
                    sat.add(nid)
                    changed = True
        self.alts = [tuple(n for n in members if n in sat) for members in flat]
        self.finalized = True

    def add_late_alt(self, node: Node) -> int:
        """A node created while matching (object key leaves): its own alternative."""
        nid = self.add_node(node)
        self.alt_members.append([("n", nid)])
        self.alts.append((nid,) if node.satisfiable(lambda a: bool(self.alts[a])) else ())
        return len(self.alts) - 1

    def alt_nonempty(self, aid: int) -> bool:
        return bool(self.alts[aid])

    # -- bytes --------------------------------------------------------------------------
    def advance(self, stack: Stack, b: int, out: list) -> None:
        (nid, local), rest = stack
        node = self.nodes[nid]
        for act in node.step(local, b):
            if act[0] == STAY:
                out.append(((nid, act[1]), rest))
            else:
                _, aid, waiting, depth = act
                parent = ((nid, waiting), rest)
                for cid in self.alts[aid]:
                    for cl in self.nodes[cid].start(depth):
                        self.advance(((cid, cl), parent), b, out)
        if rest is not None:
            lab = node.result(local)
            if lab is not None:
                self.advance(self.popped(rest, lab), b, out)

    def popped(self, rest: Stack, label: int) -> Stack:
        (pid, plocal), prest = rest
        return ((pid, self.nodes[pid].resume(plocal, label)), prest)

    def intern(self, stacks: frozenset) -> int:
        sid = self.set_ids.get(stacks)
        if sid is None:
            sid = len(self.sets)
            self.sets.append(stacks)
            self.set_ids[stacks] = sid
        return sid

    def initial_state(self, root_nid: int) -> int:
        return self.intern(frozenset([((root_nid, self.nodes[root_nid].start(0)[0]), None)]))

    def step(self, sid: int, b: int) -> int:
        key = sid << 8 | b
        t = self.step_memo.get(key)
        if t is not None:
            return t
        out: list = []
        for stack in self.sets[sid]:
            self.advance(stack, b, out)
        t = self.intern(frozenset(out)) if out else -1
        self.step_memo[key] = t
        return t

    def step_bytes(self, sid: int, data: bytes) -> int:
        for b in data:
            sid = self.step(sid, b)
            if sid < 0:
                return -1
        return sid

    def stack_can_end(self, stack: Stack) -> bool:
        while True:
            (nid, local), rest = stack
            lab = self.nodes[nid].result(local)
            if lab is None:
                return False
            if rest is None:
                return True
            stack = self.popped(rest, lab)

    def can_end(self, sid: int) -> bool:
        r = self.end_memo.get(sid)
        if r is None:
            r = any(self.stack_can_end(s) for s in self.sets[sid])
            self.end_memo[sid] = r
        return r

    def _open_work(self, sid: int) -> int:
        """A rough count of what state ``sid`` must still close or write, fewest over its
        stacks: one per open node, three per missing required key or array item, the bytes a
        string, key or literal needs to reach an accepting state, and the length of a number
        being written (numbers grow without bound otherwise)."""
        best = 1 << 30
        for stack in self.sets[sid]:
            work = 0
            while stack is not None:
                (nid, local), stack = stack
                node = self.nodes[nid]
                work += 1
                if isinstance(node, ObjectNode) and local[0] >= 0:
                    work += 3 * bin(node.required_mask & ~local[1]).count("1")
                elif isinstance(node, ArrayNode) and local[0] >= 0:
                    work += 3 * max(0, node.min_items - local[1])
                elif isinstance(node, NumberNode):
                    work += len(local) + (node.result(local) is None)
                elif isinstance(node, CountedStringNode):
                    work += _accept_distance(node.dfa)[local[0]] + max(0, node.min_len - local[1])
                elif isinstance(node, KeyLeafNode) and stack is not None:
                    work += _accept_distance(node.dfa, self._missing_key_labels(stack[0]))[local]
                elif isinstance(node, LeafNode):
                    work += _accept_distance(node.dfa)[local]
            best = min(best, work)
        return best

    def _missing_key_labels(self, parent: tuple[int, Any]) -> frozenset[int] | None:
        """The key-leaf labels naming a required key the parent object still misses (None
        when it misses none: any key will do)."""
        nid, (_, seen, *_) = parent
        node = self.nodes[nid]
        if not isinstance(node, ObjectNode):
            return None
        missing = node.required_mask & ~seen
        if not missing:
            return None
        _, outcomes = node.key_leaf_for_seen(seen)
        labels = frozenset(lab for lab, (index, _) in enumerate(outcomes) if index >= 0 and missing >> index & 1)
        return labels or None

    def completion(self, sid: int) -> bytes | None:
        """A short byte string taking state ``sid`` to a state that can end (b"" if it can end
        already); None if none is found.

        Breadth-first over bytes with a beam that keeps the states with the least open work
        (ties: closing bytes first); a greedy dive (beam 1) first, wider beams if it fails,
        each bounded by ``_COMPLETION_MAX_STEPS`` byte steps. Not always the shortest, and it
        can miss where a completion must spell long key names through a crowd of alternatives.
        Every state on a found path is memoised with its suffix.
        """
        memo = self.completion_memo
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
        memo = self.completion_memo
        parents: dict[int, tuple[int, int]] = {sid: (-1, -1)}
        level = [sid]
        found = -1
        work = 0
        for _ in range(_COMPLETION_MAX_BYTES):
            for s in level:
                if self.can_end(s) or memo.get(s) is not None:
                    found = s
                    break
            if found >= 0 or not level or work > _COMPLETION_MAX_STEPS:
                break
            work += len(level) * len(_COMPLETION_BYTE_ORDER)
            # states are marked seen only once kept, so one pruned here can come back later
            candidates: dict[int, tuple[int, int, int, int]] = {}  # state -> (work, rank, parent, byte)
            for s in level:
                for rank, b in enumerate(_COMPLETION_BYTE_ORDER):
                    t = self.step(s, b)
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
        tail = b"" if self.can_end(found) else memo[found] or b""
        s = sid
        for i, b in enumerate(path):
            memo[s] = bytes(path[i:]) + tail
            s = self.step(s, b)
        memo[s] = tail
        return memo[sid]

    # -- tokens ---------------------------------------------------------------------------
    @property
    def index(self) -> VocabIndex:
        return self.info.index

    def token_mask(self, sid: int) -> np.ndarray:
        """Packed uint32 mask of the (non-EOS) tokens allowed from state ``sid``."""
        m = self.set_masks.get(sid)
        if m is None:
            stacks = list(self.sets[sid])
            m = self.stack_mask(stacks[0]).copy()
            for s in stacks[1:]:
                m |= self.stack_mask(s)
            if len(self.set_masks) >= _MASK_CACHE_MAX:
                self.set_masks.clear()
            self.set_masks[sid] = m
        return m

    def stack_mask(self, stack: Stack) -> np.ndarray:
        m = self.stack_masks.get(stack)
        if m is not None:
            return m
        (nid, local), rest = stack
        node = self.nodes[nid]
        if rest is None:
            m = ids_to_mask(self.walk(self.intern(frozenset([stack]))), self.info.vocab_size)
        elif isinstance(node, CountedStringNode):
            m = self.counted_mask(node, local, rest)
        elif (
            isinstance(node, KeyLeafNode) and node.decomposable and (km := self.key_mask(node, local, rest)) is not None
        ):
            m = km
        elif isinstance(node, (LeafNode, NumberNode)):
            if isinstance(node, NumberNode):
                inside, exits = self.number_table(nid, node, local)
            else:
                inside, exits = self.dfa_table(node.dfa, local)
            m = inside.copy()
            lab = node.result(local)
            if lab is not None:
                m |= self.stack_mask(self.popped(rest, lab))
            ok = self.viable_exit_ids(rest, exits)
            if ok:
                m |= ids_to_mask(np.concatenate(ok), self.info.vocab_size)
        else:
            m = ids_to_mask(self.walk(self.intern(frozenset([stack]))), self.info.vocab_size)
        if len(self.stack_masks) >= _MASK_CACHE_MAX:  # each mask is ~19 KB for a 152k vocabulary
            self.stack_masks.clear()
        self.stack_masks[stack] = m
        return m

    def viable_exit_ids(
        self, rest: Stack, exits: list[tuple[int, bytes, np.ndarray]], label_override: int | None = None
    ) -> list[np.ndarray]:
        """The id arrays of the exit groups whose suffix the parent accepts; groups are
        bucketed by (label, first byte) and a bucket is skipped when the parent rejects it."""
        ok: list[np.ndarray] = []
        for (label, first), groups in self._exit_buckets(exits).items():
            if label_override is not None:
                label = label_override
            if not self.exit_viable(rest, label, bytes([first])):
                continue
            for suffix, ids in groups:
                if len(suffix) == 1 or self.exit_viable(rest, label, suffix):
                    ok.append(ids)
        return ok

    def _exit_buckets(self, exits: list) -> dict[tuple[int, int], list[tuple[bytes, np.ndarray]]]:
        hit = self._bucket_index.get(id(exits))
        if hit is not None and hit[0] is exits:
            return hit[1]
        buckets: dict[tuple[int, int], list[tuple[bytes, np.ndarray]]] = {}
        for label, suffix, ids in exits:
            buckets.setdefault((label, suffix[0]), []).append((suffix, ids))
        self._bucket_index[id(exits)] = (exits, buckets)
        return buckets

    def exit_viable(self, rest: Stack, label: int, suffix: bytes) -> bool:
        """Can the parent (after its child ended with ``label``) take ``suffix``?"""
        key = (rest, label)
        psid = self.popped_sids.get(key)
        if psid is None:
            psid = self.popped_sids[key] = self.intern(frozenset([self.popped(rest, label)]))
        return self.step_bytes(psid, suffix) >= 0

    def number_table(self, nid: int, node: NumberNode, local: str) -> LeafTable:
        """Tokens a number consumes entirely from ``local``, and those that end it part-way,
        by a trie walk restricted to the number (a few digit tokens)."""
        key = (nid, local)
        hit = self.number_tables.get(key)
        if hit is not None:
            return hit
        idx = self.index
        cs, cb, cn, ts, ti = idx.child_start, idx.child_byte, idx.child_node, idx.tok_start, idx.tok_ids
        vocab = self.info.vocab
        inside: list[int] = []
        groups: dict[bytes, list[int]] = {}
        todo = [(0, local, 0)]
        while todo:
            n, loc, d = todo.pop()
            ends_here = d > 0 and node.result(loc) is not None
            for k in range(cs[n], cs[n + 1]):
                b, c = cb[k], cn[k]
                if ends_here:
                    for tid in self._subtree_tokens(c):
                        groups.setdefault(vocab[tid][d:], []).append(tid)
                nxt = node.step(loc, b)
                if not nxt:
                    continue
                inside.extend(ti[ts[c] : ts[c + 1]])
                if cs[c] != cs[c + 1]:
                    todo.append((c, nxt[0][1], d + 1))
        result = (
            ids_to_mask(inside, self.info.vocab_size),
            [(0, suffix, np.array(ids, dtype=np.int64)) for suffix, ids in groups.items()],
        )
        self.number_tables[key] = result
        return result

    def counted_mask(self, node: CountedStringNode, local: tuple[int, int], rest: Stack) -> np.ndarray:
        """Mask of a counted string: per-state tables shared by every count, filtered by the
        characters each token completes; exits checked once per (state, context)."""
        q, c = local
        ids, need, closed, exits = self.counted_base(node.dfa, q, node.boundary)
        ikey = (node.dfa.key, q, c, node.min_len, node.max_len)
        inside = self.counted_insides.get(ikey)
        if inside is None:
            # tokens ending inside the string need room for their characters; tokens ending
            # with the closing quote also need the minimum length reached
            sel = ~closed | (need + c >= node.min_len)
            if node.max_len is not None:
                sel &= need + c <= node.max_len
            inside = ids_to_mask(ids[sel], self.info.vocab_size)
            self.counted_insides[ikey] = inside
        m = inside.copy()
        lab = node.result(local)
        if lab is not None:
            m |= self.stack_mask(self.popped(rest, lab))
        ekey = (node.dfa.key, q, rest)
        viable = self.counted_exits.get(ekey)
        if viable is None:
            first_ok: dict[tuple[int, int], bool] = {}
            ok = []
            for label, suffix, e_ids, e_chars in exits:
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
            self.counted_exits[ekey] = viable
        e_ids, e_chars = viable
        if e_ids.size:
            total = e_chars + c
            sel = total >= node.min_len
            if node.max_len is not None:
                sel &= total <= node.max_len
            if sel.any():
                m |= ids_to_mask(e_ids[sel], self.info.vocab_size)
        return m

    def counted_base(self, dfa: ByteDFA, q: int, boundary: int):
        """Per (DFA, state): inside token ids with the characters each needs (completed ones
        plus one in progress), and exits as (label, suffix, ids, characters before the exit)."""
        key = (self.info.fingerprint, dfa.key, q, "counted")
        hit = _LEAF_TABLES.get(key)
        if hit is not None:
            return hit
        idx = self.index
        sink = dfa.size
        table = np.vstack([np.where(dfa.table >= 0, dfa.table, sink), np.full((1, 256), sink)]).astype(np.int64)
        flat = table.reshape(-1)
        labels = np.concatenate([dfa.label, [-1]]).astype(np.int32)
        state = np.full(len(idx.order), q, dtype=np.int64)
        chars = np.zeros(len(idx.order), dtype=np.int32)
        exit_pos = []
        for p, col in enumerate(idx.cols):
            n = len(col)
            cur = state[:n]
            if p > 0:
                hits = np.nonzero(labels[cur] >= 0)[0]
                if hits.size:
                    exit_pos.append((p, hits, labels[cur[hits]], chars[hits]))
            nxt = flat[cur * 256 + col]
            chars[:n] += (nxt == boundary) & (cur != dfa.start)
            state[:n] = nxt
            if p % 4 == 3 and not (nxt != sink).any():
                break
        alive = state != sink
        closed_all = labels[np.minimum(state, sink)] >= 0
        final_mid = (state != boundary) & ~closed_all
        need = chars + final_mid.astype(np.int32)
        ids = idx.order[alive].astype(np.int64)
        need = need[alive]
        closed = closed_all[alive]
        groups: dict[tuple[int, bytes], tuple[list[int], list[int]]] = {}
        vocab, order = self.info.vocab, idx.order
        for p, hits, labs, ch in exit_pos:
            for h, lab, n_ch in zip(hits.tolist(), labs.tolist(), ch.tolist(), strict=True):
                tid = int(order[h])
                g = groups.setdefault((lab, vocab[tid][p:]), ([], []))
                g[0].append(tid)
                g[1].append(n_ch)
        exits = [
            (lab, suffix, np.array(a, dtype=np.int64), np.array(b, dtype=np.int32))
            for (lab, suffix), (a, b) in groups.items()
        ]
        result = (ids, need, closed, exits)
        _LEAF_TABLES[key] = result
        return result

    def key_mask(self, node: KeyLeafNode, q: int, rest: Stack) -> np.ndarray | None:
        """Mask for a key product state where the "any string" component is alive and usable
        (None elsewhere: the narrow product DFA is then used directly).

        The any-string component's shared table already holds every token that stays inside
        the key and every token that closes it; only the tokens that spell the rest of a
        named key (the same bytes every time, with canonical escapes) get another label: they
        are taken out of the shared exits and checked under their own label."""
        spec = self.key_specials(node, q)
        if spec is None:
            return None
        any_dfa, q_any, any_label, special_mask, drop_mask, special_exits = spec
        inside, exits = self.dfa_table(any_dfa, q_any)
        m = inside & ~drop_mask if drop_mask is not None else inside.copy()
        if any_label >= 0:
            ok = self.viable_exit_ids(rest, exits, label_override=any_label)
            if ok:
                viable = ids_to_mask(np.concatenate(ok), self.info.vocab_size)
                m |= viable & ~special_mask if special_mask is not None else viable
        ok = self.viable_exit_ids(rest, special_exits)
        if ok:
            m |= ids_to_mask(np.concatenate(ok), self.info.vocab_size)
        return m

    def key_specials(self, node: KeyLeafNode, q: int):
        key = (id(node), q)
        if key in self.key_tables:
            return self.key_tables[key]
        states = node.comp_states[q].tolist()
        any_c = node.comp_tags.index(("any",)) if ("any",) in node.comp_tags else -1
        result = None
        if (
            any_c >= 0
            and states[any_c] >= 0
            and node.useful[any_c]
            and node.labels[q] < 0
            and node.components[any_c].labels[states[any_c]] < 0
        ):
            result = self._key_specials(node, states, any_c)
        self.key_tables[key] = result
        return result

    def _key_specials(self, node: KeyLeafNode, states: list[int], any_c: int):
        any_label = node.combine(frozenset([("any",)]))
        vocab = self.info.vocab
        special: dict[int, tuple[int, int]] = {}  # token -> (label, length of the key part)
        for c, qc in enumerate(states):
            if c == any_c or qc < 0 or node.comp_tags[c][0] != "lit":
                continue
            rest = _unique_completion(node.components[c], qc)
            if rest is None:
                return None
            label = node.combine(frozenset([("any",), node.comp_tags[c]]))
            trie_node = self._trie_find(rest)
            if trie_node is not None:
                for tid in self._subtree_tokens(trie_node):
                    special[tid] = (label, len(rest))
        drop = [t for t, (lab, n) in special.items() if lab < 0 and len(vocab[t]) == n]
        groups: dict[tuple[int, bytes], list[int]] = {}
        for t, (lab, n) in special.items():
            if lab >= 0 and len(vocab[t]) > n:
                groups.setdefault((lab, vocab[t][n:]), []).append(t)
        special_exits = [(lab, suffix, np.array(ids, dtype=np.int64)) for (lab, suffix), ids in groups.items()]
        special_mask = ids_to_mask(list(special), self.info.vocab_size) if special else None
        drop_mask = ids_to_mask(drop, self.info.vocab_size) if drop else None
        return node.components[any_c], states[any_c], any_label, special_mask, drop_mask, special_exits

    def _exit_positions(self, exits: list[tuple[int, bytes, np.ndarray]]) -> dict[int, list[int]]:
        """token id -> indices of the exit groups holding it (memoised per exits list)."""
        hit = self._exit_index.get(id(exits))
        if hit is not None and hit[0] is exits:
            return hit[1]
        index: dict[int, list[int]] = {}
        for gi, (_, _, ids) in enumerate(exits):
            for tid in ids.tolist():
                index.setdefault(tid, []).append(gi)
        self._exit_index[id(exits)] = (exits, index)
        return index

    def _trie_find(self, data: bytes) -> int | None:
        idx = self.index
        cs, cb, cn = idx.child_start, idx.child_byte, idx.child_node
        n = 0
        for b in data:
            for k in range(cs[n], cs[n + 1]):
                if cb[k] == b:
                    n = cn[k]
                    break
            else:
                return None
        return n

    def walk(self, sid: int) -> list[int]:
        """Token ids accepted from ``sid``, by a pruned depth-first walk of the token trie."""
        idx = self.index
        cs, cb, cn, ts, ti = idx.child_start, idx.child_byte, idx.child_node, idx.tok_start, idx.tok_ids
        memo = self.step_memo
        allowed: list[int] = []
        todo = [(0, sid)]
        while todo:
            n, s = todo.pop()
            base = s << 8
            for k in range(cs[n], cs[n + 1]):
                b = cb[k]
                t = memo.get(base | b)
                if t is None:
                    t = self.step(s, b)
                if t < 0:
                    continue
                c = cn[k]
                if ts[c] != ts[c + 1]:
                    allowed.extend(ti[ts[c] : ts[c + 1]])
                if cs[c] != cs[c + 1]:
                    todo.append((c, t))
        return allowed

    def dfa_table(self, dfa: ByteDFA, q: int) -> LeafTable:
        """For a byte DFA in state ``q``: the packed mask of tokens consumed entirely inside it,
        and the tokens that leave it part-way (from an accepting state) as (label, rest of the
        token, ids). Cached per (tokenizer, DFA, state) in memory across grammars, and on disk
        for the DFAs marked persistent (formats, plain strings)."""
        key = (self.info.fingerprint, dfa.key, q)
        hit = _LEAF_TABLES.get(key)
        if hit is not None:
            return hit
        path = self.table_path(dfa, q) if dfa.persistent else None
        result = _load_table(path) if path is not None else None
        if result is None:
            row = dfa.rows[q]
            first = self.index.first_byte_counts
            if sum(first[b] for b in range(256) if row[b] >= 0) <= _WALK_MAX_TOKENS:
                result = self._dfa_table_walk(dfa, q)
            else:
                result = self._dfa_table_numpy(dfa, q)
            if path is not None:
                _save_table(path, result)
        if len(_LEAF_TABLES) >= _LEAF_TABLES_MAX:
            _LEAF_TABLES.clear()
        _LEAF_TABLES[key] = result
        return result

    def table_path(self, dfa: ByteDFA, q: int) -> Path:
        from tritonlm.config import env

        return env().cache_dir / "constraints" / f"tables-{self.info.fingerprint}" / f"{dfa.key}-{q}.pkl"

    def precompute(self, dfa: ByteDFA) -> None:
        """Compute (or load) the tables of every state of a persistent DFA."""
        for q in range(dfa.size):
            if dfa.labels[q] < 0:
                self.dfa_table(dfa, q)

    def _dfa_table_walk(self, dfa: ByteDFA, q: int) -> LeafTable:
        idx = self.index
        cs, cb, cn, ts, ti = idx.child_start, idx.child_byte, idx.child_node, idx.tok_start, idx.tok_ids
        rows, labels = dfa.rows, dfa.labels
        inside: list[int] = []
        sub_exits: list[tuple[int, bytes, np.ndarray]] = []
        todo = [(0, q, 0)]
        while todo:
            n, s, d = todo.pop()
            lab = labels[s]
            for k in range(cs[n], cs[n + 1]):
                b, c = cb[k], cn[k]
                if lab >= 0 and d > 0:
                    sub_exits.extend((lab, suffix, ids) for suffix, ids in self._subtree_groups(c, d))
                t = rows[s][b]
                if t < 0:
                    continue
                inside.extend(ti[ts[c] : ts[c + 1]])
                if cs[c] != cs[c + 1]:
                    todo.append((c, t, d + 1))
        return ids_to_mask(inside, self.info.vocab_size), sub_exits

    def _subtree_groups(self, n: int, d: int) -> list[tuple[bytes, np.ndarray]]:
        """The tokens under trie node ``n`` (at depth d + 1) grouped by their bytes from d on."""
        key = (n, d)
        hit = self._subtree_memo.get(key)
        if hit is None:
            groups: dict[bytes, list[int]] = {}
            vocab = self.info.vocab
            for tid in self._subtree_tokens(n):
                groups.setdefault(vocab[tid][d:], []).append(tid)
            hit = self._subtree_memo[key] = [(sfx, np.array(ids, dtype=np.int64)) for sfx, ids in groups.items()]
        return hit

    def _subtree_tokens(self, n: int) -> list[int]:
        idx = self.index
        cs, cn, ts, ti = idx.child_start, idx.child_node, idx.tok_start, idx.tok_ids
        out: list[int] = []
        todo = [n]
        while todo:
            m = todo.pop()
            out.extend(ti[ts[m] : ts[m + 1]])
            todo.extend(cn[cs[m] : cs[m + 1]])
        return out

    def _dfa_table_numpy(self, dfa: ByteDFA, q: int) -> LeafTable:
        """Run every token through the DFA at once, position by position, keeping only the
        tokens still alive (tokens are sorted by decreasing length, so the ones longer than
        position p are the first ``len(cols[p])``)."""
        idx = self.index
        sink = dfa.size
        table = np.vstack([np.where(dfa.table >= 0, dfa.table, sink), np.full((1, 256), sink)]).astype(np.int64)
        flat = table.reshape(-1)
        labels = np.concatenate([dfa.label, [-1]]).astype(np.int32)
        alive = np.arange(len(idx.order), dtype=np.int64)
        st = np.full(len(idx.order), q, dtype=np.int64)
        ended: list[np.ndarray] = []
        exit_pos: list[tuple[int, np.ndarray, np.ndarray]] = []
        for p, col in enumerate(idx.cols):
            n = len(col)
            done = alive >= n
            if done.any():
                ended.append(alive[done])
                alive, st = alive[~done], st[~done]
            if not alive.size:
                break
            if p > 0:
                lab = labels[st]
                hits = np.nonzero(lab >= 0)[0]
                if hits.size:
                    exit_pos.append((p, alive[hits], lab[hits]))
            nxt = flat[st * 256 + col[alive]]
            ok = nxt != sink
            alive, st = alive[ok], nxt[ok]
        ended.append(alive)
        inside = ids_to_mask(idx.order[np.concatenate(ended)], self.info.vocab_size)
        groups: dict[tuple[int, bytes], list[int]] = {}
        vocab = self.info.vocab
        order = idx.order
        for p, hits, labs in exit_pos:
            for h, lab in zip(hits.tolist(), labs.tolist(), strict=True):
                tid = int(order[h])
                groups.setdefault((lab, vocab[tid][p:]), []).append(tid)
        return inside, [(lab, suffix, np.array(ids, dtype=np.int64)) for (lab, suffix), ids in groups.items()]


def _accept_distance(dfa: ByteDFA, labels: frozenset[int] | None = None) -> list[int]:
    """Per DFA state, the fewest bytes to an accepting state (with a label in ``labels``, if
    given); a large number if there is none. Computed once per DFA and label set."""
    cache = dfa.__dict__.setdefault("_accept_distance", {})
    dist = cache.get(labels)
    if dist is None:
        n = dfa.size
        preds = dfa.__dict__.get("_preds")
        if preds is None:
            preds = [[] for _ in range(n)]
            for q, row in enumerate(dfa.rows):
                for t in set(row):
                    if t >= 0:
                        preds[t].append(q)
            dfa.__dict__["_preds"] = preds
        dist = [1 << 20] * n
        frontier = [q for q in range(n) if dfa.labels[q] >= 0 and (labels is None or dfa.labels[q] in labels)]
        for q in frontier:
            dist[q] = 0
        d = 0
        while frontier:
            d += 1
            nxt = []
            for t in frontier:
                for q in preds[t]:
                    if dist[q] > d:
                        dist[q] = d
                        nxt.append(q)
            frontier = nxt
        cache[labels] = dist
    return dist


def _unique_completion(dfa: ByteDFA, q: int) -> bytes | None:
    """The only byte string leading from ``q`` to acceptance (through the closing quote), or
    None if there is a choice."""
    out = bytearray()
    while dfa.labels[q] < 0:
        row = dfa.rows[q]
        nxt = [b for b in range(256) if row[b] >= 0]
        if len(nxt) != 1:
            return None
        out.append(nxt[0])
        q = row[nxt[0]]
    return bytes(out)


def _load_table(path: Path) -> LeafTable | None:
    try:
        with open(path, "rb") as f:
            inside, exits = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError):
        return None
    return np.asarray(inside, dtype=np.uint32), exits


def _save_table(path: Path, table: LeafTable) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(table, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:
        pass
