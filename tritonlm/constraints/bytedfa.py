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
from .budget import BYTE_STATE_UNITS, Budget, CompileBudget
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
        self._nbytes = -1

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        """An estimate of the memory this DFA holds: its numpy tables and their Python-list
        mirrors (a list of 256 slots per state, plus an int object per target above 256)."""
        if self._nbytes < 0:
            big = int(np.count_nonzero(self.table > 256))
            self._nbytes = self.table.nbytes + self.label.nbytes + self.size * (56 + 8 * 256 + 8) + 32 * big + 400
        return self._nbytes

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


def _determinize_bytes(nfa: _ByteNFA, start: int, budget: Budget, construct: str) -> ByteDFA:
    what = f"determinising {construct}"
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
            budget.tick(what, 1 + len(nfa.edges[s]))
            for m, t in nfa.edges[s]:
                by_mask.setdefault(m, set()).add(t)
        row = [-1] * 256
        if by_mask:
            for part in _byte_partition(list(by_mask)):
                budget.tick(what, len(by_mask))
                low = (part & -part).bit_length() - 1
                targets = frozenset().union(*(ts for m, ts in by_mask.items() if m >> low & 1))
                if not targets:
                    continue
                if targets not in index:
                    budget.charge(construct, BYTE_STATE_UNITS)
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
    dfa: CharDFA,
    labels: dict[Hashable, int] | None = None,
    *,
    json_string: bool = True,
    escapes: str = "any",
    budget: Budget | None = None,
    construct: str = "a string",
) -> ByteDFA:
    """The JSON text (quotes included) of the strings ``dfa`` accepts; with
    ``json_string=False``, their raw UTF-8 text instead.

    With ``labels``, each accepting char-DFA tag maps to a byte-DFA label (tags missing from
    the map are not accepted); otherwise every accepting state gets label 0. Byte states are
    charged to ``budget``.
    """
    budget = budget if budget is not None else CompileBudget.unlimited()
    what = f"spelling {construct} as bytes"
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
        budget.tick(what, 1 + len(dfa.trans[q]))
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
    return _determinize_bytes(nfa, start, budget, construct)


def bytes_dfa(alternatives: Iterable[bytes], budget: Budget | None = None, construct: str = "a literal") -> ByteDFA:
    """A DFA for a finite set of raw byte strings (all with label 0)."""
    budget = budget if budget is not None else CompileBudget.unlimited()
    nfa = _ByteNFA()
    start = nfa.new_state()
    final = nfa.new_state(0)
    for alt in alternatives:
        if not alt:
            raise ValueError("empty alternative")
        cur = start
        budget.tick(construct, len(alt))
        for k, b in enumerate(alt):
            nxt = final if k == len(alt) - 1 else nfa.new_state()
            nfa.edges[cur].append((1 << b, nxt))
            cur = nxt
    return _determinize_bytes(nfa, start, budget, construct)


def product_table(
    components: list[ByteDFA], budget: Budget | None = None, construct: str = "object keys"
) -> tuple[np.ndarray, list[dict[int, int]]]:
    """The product automaton of several byte DFAs run side by side (a union: a product state
    lives while any component does). Returns the transition table (-1 = dead) and, per product
    state, the live components' states as {component: state} (absent: that component died).

    Each step looks only at the components still alive, so the cost follows the number of
    product states and not product states times components (keys die after a byte or two).
    """
    budget = budget if budget is not None else CompileBudget.unlimited()
    start = {c: comp.start for c, comp in enumerate(components)}
    index: dict[tuple[tuple[int, int], ...], int] = {tuple(start.items()): 0}
    order: list[dict[int, int]] = [start]
    rows: list[np.ndarray] = []
    i = 0
    while i < len(order):
        live = order[i]
        i += 1
        budget.tick(construct, len(live))
        comps = list(live)
        cols = np.stack([components[c].table[live[c]] for c in comps], axis=1)  # [256, live]
        uniq, inv = np.unique(cols, axis=0, return_inverse=True)
        ids = []
        for u in uniq.tolist():
            nxt = {c: t for c, t in zip(comps, u, strict=True) if t >= 0}
            if not nxt:
                ids.append(-1)
                continue
            key = tuple(nxt.items())
            if key not in index:
                budget.charge(construct, BYTE_STATE_UNITS)
                index[key] = len(order)
                order.append(nxt)
            ids.append(index[key])
        rows.append(np.array(ids, dtype=np.int32)[inv.reshape(-1)])
    return np.stack(rows).astype(np.int32), order


def relabel(table: np.ndarray, labels: np.ndarray) -> ByteDFA:
    """A pruned ByteDFA over ``table`` with the given labels (state numbering is kept)."""
    return _prune_bytes(ByteDFA(table, labels.astype(np.int32)))
