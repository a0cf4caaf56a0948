"""Per-tokenizer token tables of byte DFAs, shared by every grammar of one compiler.

For a byte DFA in state ``q`` (a string, key or literal leaf), ``dfa_table`` gives the packed
uint32 mask of the tokens consumed entirely inside the DFA, and the tokens that leave it
part-way from an accepting state, grouped as (label, rest of the token, ids); ``counted_base``
gives the same for counted strings, with the characters each token completes. Tables are
computed with a pruned trie walk (few tokens can start) or with numpy over the length-sorted
byte columns (many can), kept in bounded LRU caches, and, for DFAs marked ``persistent``
(built-in formats, the any-string DFA), pickled on disk under
``tritonlm.config.env().cache_dir / "constraints" / "tables-<tokenizer fingerprint>"``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import numpy as np

from .bitmask import ids_to_mask
from .bytedfa import ByteDFA
from .cache import LRUCache
from .tokenizer_info import TokenizerInfo, VocabIndex

ExitGroups = list[tuple[int, bytes, np.ndarray]]  # (label, rest of the token, token ids)
LeafTable = tuple[np.ndarray, ExitGroups]  # (packed inside mask, exits)
# (inside ids, characters each needs, closes the string?, exits as (label, suffix, ids, characters before))
CountedTable = tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, bytes, np.ndarray, np.ndarray]]]

_WALK_MAX_TOKENS = 3000  # DFA states letting fewer tokens start are matched by trie walk, others with numpy


class LeafTables:
    """Token tables for one tokenizer; ``max_entries`` bounds each of its LRU caches."""

    def __init__(self, info: TokenizerInfo, max_entries: int = 4096) -> None:
        self.info = info
        self._leaf: LRUCache[tuple[str, int], LeafTable] = LRUCache(max_entries)
        self._counted: LRUCache[tuple[str, int], CountedTable] = LRUCache(max_entries)
        self._subtree: LRUCache[tuple[int, int], list[tuple[bytes, np.ndarray]]] = LRUCache(16 * max_entries)

    @property
    def index(self) -> VocabIndex:
        return self.info.index

    def __len__(self) -> int:
        return len(self._leaf) + len(self._counted)

    def clear(self) -> None:
        self._leaf.clear()
        self._counted.clear()
        self._subtree.clear()

    def dfa_table(self, dfa: ByteDFA, q: int) -> LeafTable:
        """The table of ``dfa`` in state ``q`` (memory, then disk for persistent DFAs, then built)."""
        key = (dfa.key, q)
        hit = self._leaf.get(key)
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
        self._leaf.put(key, result)
        return result

    def table_path(self, dfa: ByteDFA, q: int) -> Path:
        from tritonlm.config import env

        return env().cache_dir / "constraints" / f"tables-{self.info.fingerprint}" / f"{dfa.key}-{q}.pkl"

    def precompute(self, dfa: ByteDFA) -> None:
        """Compute (or load) the tables of every non-accepting state of ``dfa``."""
        for q in range(dfa.size):
            if dfa.labels[q] < 0:
                self.dfa_table(dfa, q)

    def _dfa_table_walk(self, dfa: ByteDFA, q: int) -> LeafTable:
        idx = self.index
        cs, cb, cn, ts, ti = idx.child_start, idx.child_byte, idx.child_node, idx.tok_start, idx.tok_ids
        rows, labels = dfa.rows, dfa.labels
        inside: list[int] = []
        sub_exits: ExitGroups = []
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
        hit = self._subtree.get(key)
        if hit is None:
            groups: dict[bytes, list[int]] = {}
            vocab = self.info.vocab
            for tid in self.index.subtree_tokens(n):
                groups.setdefault(vocab[tid][d:], []).append(tid)
            hit = [(sfx, np.array(ids, dtype=np.int64)) for sfx, ids in groups.items()]
            self._subtree.put(key, hit)
        return hit

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

    def counted_base(self, dfa: ByteDFA, q: int, boundary: int) -> CountedTable:
        """Per (DFA, state): inside token ids with the characters each needs (completed ones
        plus one in progress), and exits as (label, suffix, ids, characters before the exit)."""
        key = (dfa.key, q)
        hit = self._counted.get(key)
        if hit is not None:
            return hit
        result = self._counted_base(dfa, q, boundary)
        self._counted.put(key, result)
        return result

    def _counted_base(self, dfa: ByteDFA, q: int, boundary: int) -> CountedTable:
        idx = self.index
        sink = dfa.size
        table = np.vstack([np.where(dfa.table >= 0, dfa.table, sink), np.full((1, 256), sink)]).astype(np.int64)
        flat = table.reshape(-1)
        labels = np.concatenate([dfa.label, [-1]]).astype(np.int32)
        state = np.full(len(idx.order), q, dtype=np.int64)
        chars = np.zeros(len(idx.order), dtype=np.int32)
        exit_pos: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
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
        return ids, need, closed, exits


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
