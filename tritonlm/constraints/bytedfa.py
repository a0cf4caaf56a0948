"""Byte-level DFAs: the JSON text of a string language, finite byte sets, and products.

``string_byte_dfa`` expands a ``CharDFA`` into a ``ByteDFA`` over the JSON text of the
string, opening and closing quote included, accepting every legal spelling of each
character (see ``spelling``). Every state of a built ``ByteDFA`` can reach an accepting
state (dead transitions are pruned), which is what keeps the matcher free of dead ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np

from .automata import CharDFA
from .charclass import CharClass
from .spelling import ByteSeq, bits, json_char_seqs, utf8_seqs


@dataclass
class ByteDFA:
    """``table[q, b]`` is the next state or -1; ``label[q]`` >= 0 marks accepting states
    (the label says which outcome was recognised, e.g. which property key)."""

    table: np.ndarray  # int32 [n, 256]
    label: np.ndarray  # int32 [n]
    start: int = 0

    def __post_init__(self) -> None:
        self.persistent = False  # tables of this DFA worth caching on disk (shared, fixed DFAs)
        self.rows: list[list[int]] = self.table.tolist()
        self.labels: list[int] = self.label.tolist()
        h = hashlib.sha1(self.table.tobytes())
        h.update(self.label.tobytes())
        h.update(str(self.start).encode())
        self.key = h.hexdigest()[:24]  # stable across processes (keys the on-disk table cache)
        self._distances: dict[frozenset[int] | None, list[int]] = {}
        self._preds: list[list[int]] | None = None

    @property
    def size(self) -> int:
        return len(self.rows)

    def accept_distance(self, labels: frozenset[int] | None = None) -> list[int]:
        """Per state, the fewest bytes to an accepting state (with a label in ``labels``, if
        given); a large number if there is none. Computed once per label set."""
        dist = self._distances.get(labels)
        if dist is None:
            dist = self._distances[labels] = self._distances_to(labels)
        return dist

    def _distances_to(self, labels: frozenset[int] | None) -> list[int]:
        n = self.size
        if self._preds is None:
            self._preds = [[] for _ in range(n)]
            for q, row in enumerate(self.rows):
                for t in set(row):
                    if t >= 0:
                        self._preds[t].append(q)
        preds = self._preds
        dist = [1 << 20] * n
        frontier = [q for q in range(n) if self.labels[q] >= 0 and (labels is None or self.labels[q] in labels)]
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
        return dist

    def unique_completion(self, q: int) -> bytes | None:
        """The only byte string leading from ``q`` to acceptance (through the closing quote),
        or None if there is a choice."""
        out = bytearray()
        while self.labels[q] < 0:
            row = self.rows[q]
            nxt = [b for b in range(256) if row[b] >= 0]
            if len(nxt) != 1:
                return None
            out.append(nxt[0])
            q = row[nxt[0]]
        return bytes(out)

    def run(self, data: bytes, state: int | None = None) -> int:
        q = self.start if state is None else state
        for b in data:
            q = self.rows[q][b]
            if q < 0:
                return -1
        return q


class _ByteNFA:
    def __init__(self) -> None:
        self.edges: list[list[tuple[int, int]]] = []
        self.label: list[int] = []

    def new_state(self, label: int = -1) -> int:
        self.edges.append([])
        self.label.append(label)
        return len(self.edges) - 1


def _byte_partition(masks: list[int]) -> list[int]:
    parts = [(1 << 256) - 1]
    for m in masks:
        nxt = []
        for p in parts:
            a, b = p & m, p & ~m
            if a:
                nxt.append(a)
            if b:
                nxt.append(b)
        parts = nxt
    return parts


def _determinize_bytes(nfa: _ByteNFA, start: int) -> ByteDFA:
    index = {frozenset([start]): 0}
    order = [frozenset([start])]
    rows: list[list[int]] = []
    labels: list[int] = []
    part_bytes: dict[int, list[int]] = {}  # byte set -> its bytes (the same sets recur)
    i = 0
    while i < len(order):
        subset = order[i]
        i += 1
        labs = {nfa.label[s] for s in subset if nfa.label[s] >= 0}
        if len(labs) > 1:
            raise AssertionError("ambiguous byte DFA labels")
        labels.append(labs.pop() if labs else -1)
        by_mask: dict[int, set[int]] = {}  # byte set -> NFA targets (many edges share a set)
        for s in subset:
            for m, t in nfa.edges[s]:
                by_mask.setdefault(m, set()).add(t)
        row = [-1] * 256
        if by_mask:
            for part in _byte_partition(list(by_mask)):
                low = (part & -part).bit_length() - 1
                targets = frozenset().union(*(ts for m, ts in by_mask.items() if m >> low & 1))
                if not targets:
                    continue
                if targets not in index:
                    index[targets] = len(order)
                    order.append(targets)
                tid = index[targets]
                members = part_bytes.get(part)
                if members is None:
                    members = part_bytes[part] = [b for b in range(256) if part >> b & 1]
                for b in members:
                    row[b] = tid
        rows.append(row)
    table = np.array(rows, dtype=np.int32).reshape(-1, 256)
    return _prune_bytes(ByteDFA(table, np.array(labels, dtype=np.int32)))


def _prune_bytes(dfa: ByteDFA) -> ByteDFA:
    """``dfa`` without the transitions into states from which no accepting state is reachable."""
    n = dfa.size
    table = dfa.table
    # backward search from the accepting states over the reversed transitions
    src, _ = np.nonzero(table >= 0)
    edges = np.unique(src.astype(np.int64) * n + table[table >= 0])  # (src, dst) pairs, deduplicated
    preds: list[list[int]] = [[] for _ in range(n)]
    for s, d in zip((edges // n).tolist(), (edges % n).tolist(), strict=True):
        preds[d].append(s)
    alive = (dfa.label >= 0).tolist()
    stack = [q for q in range(n) if alive[q]]
    while stack:
        for r in preds[stack.pop()]:
            if not alive[r]:
                alive[r] = True
                stack.append(r)
    live = np.array(alive, dtype=bool)
    table = np.where((table >= 0) & live[np.maximum(table, 0)], table, -1).astype(np.int32)
    if not live[dfa.start]:
        return ByteDFA(np.full((1, 256), -1, dtype=np.int32), np.array([-1], dtype=np.int32))
    return ByteDFA(table, dfa.label.copy(), dfa.start)


def string_byte_dfa(
    dfa: CharDFA, labels: dict[Hashable, int] | None = None, *, json_string: bool = True, escapes: str = "any"
) -> ByteDFA:
    """The JSON text (quotes included) of the strings ``dfa`` accepts; with
    ``json_string=False``, their raw UTF-8 text instead.

    With ``labels``, each accepting char-DFA tag maps to a byte-DFA label (tags missing from
    the map are not accepted); otherwise every accepting state gets label 0.
    """
    nfa = _ByteNFA()
    start = nfa.new_state()
    base = [nfa.new_state() for _ in range(dfa.size)]
    finals: dict[int, int] = {}
    quote = bits([0x22])
    if json_string:
        nfa.edges[start].append((quote, base[dfa.start]))
    else:
        start = base[dfa.start]
    seq_cache: dict[CharClass, list[ByteSeq]] = {}
    chain_cache: dict[tuple[CharClass, int], list[tuple[int, int]]] = {}
    for q in range(dfa.size):
        tag = dfa.accept[q]
        if tag is not None:
            lab = 0 if labels is None else labels.get(tag, -1)
            if lab >= 0:
                if not json_string:
                    nfa.label[base[q]] = lab
                else:
                    if lab not in finals:
                        finals[lab] = nfa.new_state(lab)
                    nfa.edges[base[q]].append((quote, finals[lab]))
        for cls, t in dfa.trans[q]:
            key = (cls, t)
            if key not in chain_cache:
                if cls not in seq_cache:
                    seq_cache[cls] = (
                        json_char_seqs(cls, escapes)
                        if json_string
                        else [seq for lo, hi in cls for seq in utf8_seqs(lo, hi)]
                    )
                firsts = []
                for seq in seq_cache[cls]:
                    nxt = base[t]
                    for m in reversed(seq[1:]):
                        s = nfa.new_state()
                        nfa.edges[s].append((m, nxt))
                        nxt = s
                    firsts.append((seq[0], nxt))
                chain_cache[key] = firsts
            nfa.edges[base[q]].extend(chain_cache[key])
    return _determinize_bytes(nfa, start)


def bytes_dfa(alternatives: Iterable[bytes]) -> ByteDFA:
    """A DFA for a finite set of raw byte strings (all with label 0)."""
    nfa = _ByteNFA()
    start = nfa.new_state()
    final = nfa.new_state(0)
    for alt in alternatives:
        if not alt:
            raise ValueError("empty alternative")
        cur = start
        for k, b in enumerate(alt):
            nxt = final if k == len(alt) - 1 else nfa.new_state()
            nfa.edges[cur].append((1 << b, nxt))
            cur = nxt
    return _determinize_bytes(nfa, start)


def product_table(components: list[ByteDFA]) -> tuple[np.ndarray, np.ndarray]:
    """The product automaton of several byte DFAs run side by side (a union: a product state
    lives while any component does). Returns the transition table (-1 = dead) and, per product
    state, the tuple of component states (-1 where that component died)."""
    k = len(components)
    tables = [np.vstack([c.table, np.full((1, 256), -1, dtype=np.int32)]) for c in components]
    start = tuple(c.start for c in components)
    index = {start: 0}
    order = [start]
    rows: list[np.ndarray] = []
    i = 0
    while i < len(order):
        tup = order[i]
        i += 1
        cols = np.stack([tables[c][tup[c]] for c in range(k)], axis=1)  # [256, k]
        uniq, inv = np.unique(cols, axis=0, return_inverse=True)
        ids = []
        for u in uniq.tolist():
            t = tuple(u)
            if max(t) < 0:
                ids.append(-1)
                continue
            if t not in index:
                index[t] = len(order)
                order.append(t)
            ids.append(index[t])
        rows.append(np.array(ids, dtype=np.int32)[inv.reshape(-1)])
    return np.stack(rows).astype(np.int32), np.array(order, dtype=np.int32).reshape(-1, k)


def relabel(table: np.ndarray, labels: np.ndarray) -> ByteDFA:
    """A pruned ByteDFA over ``table`` with the given labels (state numbering is kept)."""
    return _prune_bytes(ByteDFA(table, labels.astype(np.int32)))
