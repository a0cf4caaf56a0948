"""Per-tokenizer token tables of byte DFAs, shared by every grammar of one compiler.

For a byte DFA in state ``q`` (a string, key or literal leaf), ``dfa_table`` gives the packed
uint32 mask of the tokens consumed entirely inside the DFA, and the tokens that leave it
part-way from an accepting state, grouped as (label, rest of the token, ids); ``counted_base``
gives the same for counted strings, with the characters each token completes. Tables are
computed with a pruned trie walk (few tokens can start) or with numpy over the length-sorted
byte columns (many can), under the caller's budget, and kept in LRU caches bounded by bytes.

Tables of DFAs marked ``persistent`` (built-in formats, the any-string DFA) are also stored on
disk under ``tritonlm.config.env().cache_dir / "constraints" / "tables-<tokenizer
fingerprint>"`` as ``.npz`` files of plain arrays (read with ``allow_pickle=False``) with a
JSON header carrying a format version and the sha256 of the arrays. A file that is not
exactly what this version writes (planted, truncated, another version, wrong shapes or
dtypes, a checksum mismatch) is ignored, and the table is rebuilt and rewritten atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .bitmask import ids_to_mask, num_words
from .budget import Budget, CompileBudget
from .bytedfa import ByteDFA
from .cache import SizedLRUCache
from .tokenizer_info import TokenizerInfo, VocabIndex

ExitGroups = list[tuple[int, bytes, np.ndarray]]  # (label, rest of the token, token ids)
LeafTable = tuple[np.ndarray, ExitGroups]  # (packed inside mask, exits)
# (inside ids, characters each needs, closes the string?, exits as (label, suffix, ids, characters before))
CountedTable = tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, bytes, np.ndarray, np.ndarray]]]

_WALK_MAX_TOKENS = 3000  # DFA states letting fewer tokens start are matched by trie walk, others with numpy
_TABLE_FORMAT = "tritonlm-leaf-table"
_TABLE_VERSION = 2
_TABLE_ARRAYS = {  # name -> dtype of the arrays of a table file, in checksum order
    "inside": np.dtype(np.uint32),
    "labels": np.dtype(np.int32),
    "suffix_off": np.dtype(np.int64),
    "suffix": np.dtype(np.uint8),
    "ids_off": np.dtype(np.int64),
    "ids": np.dtype(np.int64),
}


def _groups_nbytes(groups: list[tuple[bytes, np.ndarray]]) -> int:
    return 56 + sum(120 + len(sfx) + ids.nbytes for sfx, ids in groups)


def leaf_table_nbytes(table: LeafTable) -> int:
    inside, exits = table
    return 200 + inside.nbytes + sum(150 + len(sfx) + ids.nbytes for _, sfx, ids in exits)


def _counted_nbytes(table: CountedTable) -> int:
    ids, need, closed, exits = table
    return (
        300 + ids.nbytes + need.nbytes + closed.nbytes + sum(250 + len(s) + a.nbytes + b.nbytes for _, s, a, b in exits)
    )


class LeafTables:
    """Token tables for one tokenizer, in LRU caches bounded by ``max_entries`` each and by
    ``max_bytes`` together (half for DFA tables, a quarter each for counted-string tables and
    trie subtree groups). Thread-safe (tables are built outside the caches' locks)."""

    def __init__(self, info: TokenizerInfo, max_entries: int = 4096, max_bytes: int = 128 << 20) -> None:
        self.info = info
        self.max_bytes = max_bytes
        self._leaf: SizedLRUCache[tuple[str, int], LeafTable] = SizedLRUCache(
            max(1, max_bytes // 2), leaf_table_nbytes, max_entries=max_entries
        )
        self._counted: SizedLRUCache[tuple[str, int], CountedTable] = SizedLRUCache(
            max(1, max_bytes // 4), _counted_nbytes, max_entries=max_entries
        )
        self._subtree: SizedLRUCache[tuple[int, int], list[tuple[bytes, np.ndarray]]] = SizedLRUCache(
            max(1, max_bytes // 4), _groups_nbytes, max_entries=16 * max_entries
        )

    @property
    def nbytes(self) -> int:
        return self._leaf.nbytes + self._counted.nbytes + self._subtree.nbytes

    @property
    def index(self) -> VocabIndex:
        return self.info.index

    def __len__(self) -> int:
        return len(self._leaf) + len(self._counted)

    def clear(self) -> None:
        self._leaf.clear()
        self._counted.clear()
        self._subtree.clear()

    def dfa_table(
        self, dfa: ByteDFA, q: int, budget: Budget | None = None, construct: str = "a token table"
    ) -> LeafTable:
        """The table of ``dfa`` in state ``q`` (memory, then disk for persistent DFAs, then
        built under ``budget``)."""
        key = (dfa.key, q)
        hit = self._leaf.get(key)
        if hit is not None:
            return hit
        budget = budget if budget is not None else CompileBudget.unlimited()
        path = self.table_path(dfa, q) if dfa.persistent else None
        result = load_table(path, self.info.vocab_size) if path is not None else None
        if result is None:
            row = dfa.rows[q]
            first = self.index.first_byte_counts
            if sum(first[b] for b in range(256) if row[b] >= 0) <= _WALK_MAX_TOKENS:
                result = self._dfa_table_walk(dfa, q, budget, construct)
            else:
                result = self._dfa_table_numpy(dfa, q, budget, construct)
            if path is not None:
                save_table(path, result)
        self._leaf.put(key, result)
        return result

    def table_path(self, dfa: ByteDFA, q: int) -> Path:
        from tritonlm.config import env

        return env().cache_dir / "constraints" / f"tables-{self.info.fingerprint}" / f"{dfa.key}-{q}.npz"

    def precompute(self, dfa: ByteDFA, budget: Budget | None = None, construct: str = "a token table") -> None:
        """Compute (or load) the tables of every non-accepting state of ``dfa``."""
        for q in range(dfa.size):
            if dfa.labels[q] < 0:
                self.dfa_table(dfa, q, budget, construct)

    def _dfa_table_walk(self, dfa: ByteDFA, q: int, budget: Budget, construct: str) -> LeafTable:
        idx = self.index
        cs, cb, cn, ts, ti = idx.child_start, idx.child_byte, idx.child_node, idx.tok_start, idx.tok_ids
        rows, labels = dfa.rows, dfa.labels
        inside: list[int] = []
        sub_exits: ExitGroups = []
        todo = [(0, q, 0)]
        while todo:
            n, s, d = todo.pop()
            lab = labels[s]
            budget.tick(construct, 1 + cs[n + 1] - cs[n])
            for k in range(cs[n], cs[n + 1]):
                b, c = cb[k], cn[k]
                if lab >= 0 and d > 0:
                    sub_exits.extend(
                        (lab, suffix, ids) for suffix, ids in self._subtree_groups(c, d, budget, construct)
                    )
                t = rows[s][b]
                if t < 0:
                    continue
                inside.extend(ti[ts[c] : ts[c + 1]])
                if cs[c] != cs[c + 1]:
                    todo.append((c, t, d + 1))
        return ids_to_mask(inside, self.info.vocab_size), sub_exits

    def _subtree_groups(self, n: int, d: int, budget: Budget, construct: str) -> list[tuple[bytes, np.ndarray]]:
        """The tokens under trie node ``n`` (at depth d + 1) grouped by their bytes from d on."""
        key = (n, d)
        hit = self._subtree.get(key)
        if hit is None:
            groups: dict[bytes, list[int]] = {}
            vocab = self.info.vocab
            tokens = self.index.subtree_tokens(n)
            budget.tick(construct, len(tokens))
            for tid in tokens:
                groups.setdefault(vocab[tid][d:], []).append(tid)
            hit = [(sfx, np.array(ids, dtype=np.int64)) for sfx, ids in groups.items()]
            self._subtree.put(key, hit)
        return hit

    def _dfa_table_numpy(self, dfa: ByteDFA, q: int, budget: Budget, construct: str) -> LeafTable:
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
            budget.check(construct)
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
            budget.tick(construct, len(hits))
            for h, lab in zip(hits.tolist(), labs.tolist(), strict=True):
                tid = int(order[h])
                groups.setdefault((lab, vocab[tid][p:]), []).append(tid)
        return inside, [(lab, suffix, np.array(ids, dtype=np.int64)) for (lab, suffix), ids in groups.items()]

    def counted_base(
        self, dfa: ByteDFA, q: int, boundary: int, budget: Budget | None = None, construct: str = "a token table"
    ) -> CountedTable:
        """Per (DFA, state): inside token ids with the characters each needs (completed ones
        plus one in progress), and exits as (label, suffix, ids, characters before the exit)."""
        key = (dfa.key, q)
        hit = self._counted.get(key)
        if hit is not None:
            return hit
        budget = budget if budget is not None else CompileBudget.unlimited()
        result = self._counted_base(dfa, q, boundary, budget, construct)
        self._counted.put(key, result)
        return result

    def _counted_base(self, dfa: ByteDFA, q: int, boundary: int, budget: Budget, construct: str) -> CountedTable:
        idx = self.index
        sink = dfa.size
        table = np.vstack([np.where(dfa.table >= 0, dfa.table, sink), np.full((1, 256), sink)]).astype(np.int64)
        flat = table.reshape(-1)
        labels = np.concatenate([dfa.label, [-1]]).astype(np.int32)
        state = np.full(len(idx.order), q, dtype=np.int64)
        chars = np.zeros(len(idx.order), dtype=np.int32)
        exit_pos: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        for p, col in enumerate(idx.cols):
            budget.check(construct)
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
            budget.tick(construct, len(hits))
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


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in _TABLE_ARRAYS:
        a = arrays[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape}:".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def table_arrays(table: LeafTable) -> dict[str, np.ndarray]:
    """A table as the plain arrays of its file (``meta`` is the JSON header)."""
    inside, exits = table
    suffixes = [sfx for _, sfx, _ in exits]
    ids = [a for _, _, a in exits]
    arrays: dict[str, np.ndarray] = {
        "inside": np.ascontiguousarray(inside, dtype=np.uint32),
        "labels": np.array([lab for lab, _, _ in exits], dtype=np.int32),
        "suffix_off": np.cumsum([0, *map(len, suffixes)]).astype(np.int64),
        "suffix": np.frombuffer(b"".join(suffixes), dtype=np.uint8),
        "ids_off": np.cumsum([0, *(len(a) for a in ids)]).astype(np.int64),
        "ids": np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64),
    }
    meta = {"format": _TABLE_FORMAT, "version": _TABLE_VERSION, "sha256": _checksum(arrays)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return arrays


def load_table(path: Path, vocab_size: int) -> LeafTable | None:
    """The table stored at ``path``, or None unless the file is exactly a valid table of this
    format version for ``vocab_size`` (never unpickles anything)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile) or set(data.files) != {*_TABLE_ARRAYS, "meta"}:
                return None
            arrays = {name: data[name] for name in data.files}
        return _table_from_arrays(arrays, vocab_size)
    except Exception:  # anything malformed in an untrusted file means "rebuild it"
        return None


def _table_from_arrays(arrays: dict[str, np.ndarray], vocab_size: int) -> LeafTable | None:
    meta_arr = arrays["meta"]
    if meta_arr.dtype != np.uint8 or meta_arr.ndim != 1:
        return None
    meta = json.loads(meta_arr.tobytes().decode())
    if not isinstance(meta, dict) or meta.get("format") != _TABLE_FORMAT or meta.get("version") != _TABLE_VERSION:
        return None
    for name, dtype in _TABLE_ARRAYS.items():
        if arrays[name].dtype != dtype or arrays[name].ndim != 1:
            return None
    if meta.get("sha256") != _checksum(arrays):
        return None
    inside, labels = arrays["inside"], arrays["labels"]
    suffix_off, suffix, ids_off, ids = arrays["suffix_off"], arrays["suffix"], arrays["ids_off"], arrays["ids"]
    k = len(labels)
    if inside.shape != (num_words(vocab_size),) or suffix_off.shape != (k + 1,) or ids_off.shape != (k + 1,):
        return None
    for off, total in ((suffix_off, len(suffix)), (ids_off, len(ids))):
        if off[0] != 0 or off[-1] != total or (np.diff(off) <= 0).any():
            return None
    if (labels < 0).any() or (ids.size and (ids.min() < 0 or ids.max() >= vocab_size)):
        return None
    raw = suffix.tobytes()
    so, io = suffix_off.tolist(), ids_off.tolist()
    exits = [(int(labels[g]), raw[so[g] : so[g + 1]], ids[io[g] : io[g + 1]].copy()) for g in range(k)]
    return inside.copy(), exits


def save_table(path: Path, table: LeafTable) -> None:
    """Write ``table`` to ``path`` atomically (a temporary file, then ``os.replace``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **table_arrays(table))  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass
