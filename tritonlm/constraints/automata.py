"""Character-level automata and their expansion into byte-level DFAs over JSON string text.

A *character class* is a tuple of disjoint, sorted, inclusive code-point intervals. Surrogate
code points (U+D800..U+DFFF) are never members: astral characters are reached through
surrogate-pair escapes instead.

``CharDFA`` describes the *decoded* string (what a validator sees); ``string_byte_dfa`` turns
it into a ``ByteDFA`` over the JSON text of the string, opening and closing quote included,
accepting every legal spelling of each character: raw UTF-8, the short escapes (``\\n``,
``\\"``, ``\\/`` ...), ``\\uXXXX`` in either hex case and surrogate-pair escapes. Every state of
a built ``ByteDFA`` can reach an accepting state (dead states are pruned), which is what keeps
the matcher free of dead ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

import numpy as np

MAX_CP = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)
CharClass = tuple[tuple[int, int], ...]


# ---------------------------------------------------------------------------------------
# character classes
def cc_normalize(intervals: Iterable[tuple[int, int]]) -> CharClass:
    """Sort, merge and strip surrogates."""
    items = sorted((lo, hi) for lo, hi in intervals if lo <= hi)
    out: list[tuple[int, int]] = []
    for lo, hi in items:
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    cut: list[tuple[int, int]] = []
    for lo, hi in out:
        if hi < SURROGATES[0] or lo > SURROGATES[1]:
            cut.append((lo, hi))
            continue
        if lo < SURROGATES[0]:
            cut.append((lo, SURROGATES[0] - 1))
        if hi > SURROGATES[1]:
            cut.append((SURROGATES[1] + 1, hi))
    return tuple(cut)


def cc_negate(cls: CharClass) -> CharClass:
    out = []
    prev = 0
    for lo, hi in cls:
        if lo > prev:
            out.append((prev, lo - 1))
        prev = hi + 1
    if prev <= MAX_CP:
        out.append((prev, MAX_CP))
    return cc_normalize(out)


def cc_intersect(a: CharClass, b: CharClass) -> CharClass:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo = max(a[i][0], b[j][0])
        hi = min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def cc_contains(cls: CharClass, cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in cls)


ANY_CHAR: CharClass = cc_normalize([(0, MAX_CP)])


def cc_char(cp: int) -> CharClass:
    return ((cp, cp),)


# ---------------------------------------------------------------------------------------
# character NFA (Thompson) and DFA
@dataclass
class CharNFA:
    """Epsilon-NFA over character classes; ``accept`` maps accepting states to a tag."""

    eps: list[list[int]] = field(default_factory=list)
    edges: list[list[tuple[CharClass, int]]] = field(default_factory=list)
    accept: dict[int, Hashable] = field(default_factory=dict)
    start: int = 0

    def new_state(self) -> int:
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1


@dataclass
class CharDFA:
    """Deterministic automaton over characters: ``trans[q]`` is a list of (class, target) with
    pairwise disjoint classes; ``accept[q]`` is a tag, or ``None`` for non-accepting."""

    trans: list[list[tuple[CharClass, int]]]
    accept: list[Hashable | None]
    start: int = 0

    @property
    def size(self) -> int:
        return len(self.trans)


def _closure(nfa: CharNFA, states: Iterable[int]) -> frozenset[int]:
    seen = set(states)
    todo = list(seen)
    while todo:
        s = todo.pop()
        for t in nfa.eps[s]:
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return frozenset(seen)


def _split_targets(edges: list[tuple[CharClass, object]]) -> list[tuple[CharClass, frozenset]]:
    """Partition the union of the edge classes into classes with identical target sets."""
    points: set[int] = set()
    for cls, _ in edges:
        for lo, hi in cls:
            points.add(lo)
            points.add(hi + 1)
    bounds = sorted(points)
    groups: dict[frozenset, list[tuple[int, int]]] = {}
    for k in range(len(bounds) - 1):
        lo, hi = bounds[k], bounds[k + 1] - 1
        targets = frozenset(dst for cls, dst in edges if cc_contains(cls, lo))
        if targets:
            groups.setdefault(targets, []).append((lo, hi))
    return [(cc_normalize(iv), targets) for targets, iv in groups.items()]


def determinize(nfa: CharNFA, combine_tags=None) -> CharDFA:
    """Subset construction. ``combine_tags`` maps the set of accepting NFA tags in a subset to
    the DFA tag (default: any tag present -> True)."""
    start = _closure(nfa, [nfa.start])
    index = {start: 0}
    order = [start]
    trans: list[list[tuple[CharClass, int]]] = []
    accept: list[Hashable | None] = []
    i = 0
    while i < len(order):
        subset = order[i]
        i += 1
        tags = frozenset(nfa.accept[s] for s in subset if s in nfa.accept)
        if combine_tags is None:
            accept.append(True if tags else None)
        else:
            accept.append(combine_tags(tags))
        edges = [(cls, dst) for s in subset for cls, dst in nfa.edges[s]]
        row = []
        for cls, targets in _split_targets(edges):
            nxt = _closure(nfa, targets)
            if nxt not in index:
                index[nxt] = len(order)
                order.append(nxt)
            row.append((cls, index[nxt]))
        trans.append(row)
    return prune(CharDFA(trans, accept))


def prune(dfa: CharDFA) -> CharDFA:
    """Drop states that cannot reach acceptance or are unreachable; renumber from the start.
    An empty language gives a one-state DFA with no accepting state."""
    n = dfa.size
    rev: list[list[int]] = [[] for _ in range(n)]
    for q, row in enumerate(dfa.trans):
        for _, t in row:
            rev[t].append(q)
    live = {q for q in range(n) if dfa.accept[q] is not None}
    todo = list(live)
    while todo:
        q = todo.pop()
        for p in rev[q]:
            if p not in live:
                live.add(p)
                todo.append(p)
    if dfa.start not in live:
        return CharDFA([[]], [None])
    index = {dfa.start: 0}
    order = [dfa.start]
    i = 0
    while i < len(order):
        q = order[i]
        i += 1
        for _, t in dfa.trans[q]:
            if t in live and t not in index:
                index[t] = len(order)
                order.append(t)
    trans = [[(cls, index[t]) for cls, t in dfa.trans[q] if t in live] for q in order]
    return CharDFA(trans, [dfa.accept[q] for q in order])


def is_empty(dfa: CharDFA) -> bool:
    return all(a is None for a in dfa.accept)


def intersect(a: CharDFA, b: CharDFA) -> CharDFA:
    index = {(a.start, b.start): 0}
    order = [(a.start, b.start)]
    trans: list[list[tuple[CharClass, int]]] = []
    accept: list[Hashable | None] = []
    i = 0
    while i < len(order):
        p, q = order[i]
        i += 1
        accept.append(True if a.accept[p] is not None and b.accept[q] is not None else None)
        row = []
        for ca, ta in a.trans[p]:
            for cb, tb in b.trans[q]:
                cls = cc_intersect(ca, cb)
                if not cls:
                    continue
                key = (ta, tb)
                if key not in index:
                    index[key] = len(order)
                    order.append(key)
                row.append((cls, index[key]))
        trans.append(row)
    return prune(CharDFA(trans, accept))


def with_length(dfa: CharDFA, min_len: int, max_len: int | None) -> CharDFA:
    """Product with a character counter (saturating at ``min_len`` when there is no maximum)."""
    if min_len <= 0 and max_len is None:
        return dfa
    cap = max_len if max_len is not None else min_len
    index = {(dfa.start, 0): 0}
    order = [(dfa.start, 0)]
    trans: list[list[tuple[CharClass, int]]] = []
    accept: list[Hashable | None] = []
    i = 0
    while i < len(order):
        q, c = order[i]
        i += 1
        accept.append(dfa.accept[q] if c >= min_len else None)
        row = []
        if max_len is None or c < max_len:
            nc = min(c + 1, cap)
            for cls, t in dfa.trans[q]:
                key = (t, nc)
                if key not in index:
                    index[key] = len(order)
                    order.append(key)
                row.append((cls, index[key]))
        trans.append(row)
    return prune(CharDFA(trans, accept))


def literal_nfa(nfa: CharNFA, text: str, tag: Hashable) -> None:
    """Add ``text`` as an alternative from ``nfa.start`` accepting with ``tag``."""
    cur = nfa.new_state()
    nfa.eps[nfa.start].append(cur)
    for ch in text:
        nxt = nfa.new_state()
        nfa.edges[cur].append((cc_char(ord(ch)), nxt))
        cur = nxt
    nfa.accept[cur] = tag


def literals_dfa(texts: Iterable[str]) -> CharDFA:
    nfa = CharNFA()
    nfa.start = nfa.new_state()
    for t in texts:
        literal_nfa(nfa, t, True)
    return determinize(nfa)


def any_string_dfa() -> CharDFA:
    return CharDFA([[(ANY_CHAR, 0)]], [True])


# ---------------------------------------------------------------------------------------
# JSON spellings of a character class as sequences of byte sets (bit b of an int = byte b)
def _bits(values: Iterable[int]) -> int:
    m = 0
    for v in values:
        m |= 1 << v
    return m


def _range_bits(lo: int, hi: int) -> int:
    return ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)


_HEX_DIGIT_BITS = [
    _bits([ord("0") + d]) if d < 10 else _bits([ord("a") + d - 10, ord("A") + d - 10]) for d in range(16)
]
_SHORT_ESCAPES = {0x22: b'"', 0x5C: b"\\", 0x2F: b"/", 0x08: b"b", 0x0C: b"f", 0x0A: b"n", 0x0D: b"r", 0x09: b"t"}
ByteSeq = tuple[int, ...]


def _hex_seqs(intervals: list[tuple[int, int]], width: int) -> list[ByteSeq]:
    """Sequences of hex-digit byte sets spelling exactly the values in ``intervals``
    (all within [0, 16**width))."""
    if not intervals:
        return []
    if width == 0:
        return [()]
    size = 16 ** (width - 1)
    full = [(0, 16**width - 1)]
    if intervals == full:
        return [tuple(_bits(b for d in range(16) for b in _hex_digit_bytes(d)) for _ in range(width))]
    groups: dict[tuple, int] = {}
    for d in range(16):
        base = d * size
        sub = []
        for lo, hi in intervals:
            lo2, hi2 = max(lo, base), min(hi, base + size - 1)
            if lo2 <= hi2:
                sub.append((lo2 - base, hi2 - base))
        if sub:
            key = tuple(sub)
            groups[key] = groups.get(key, 0) | _HEX_DIGIT_BITS[d]
    out = []
    for key, first in groups.items():
        for rest in _hex_seqs(list(key), width - 1):
            out.append((first, *rest))
    return out


def _hex_digit_bytes(d: int) -> list[int]:
    return [b for b in range(256) if _HEX_DIGIT_BITS[d] >> b & 1]


def _utf8_seqs(lo: int, hi: int) -> list[ByteSeq]:
    """Byte-set sequences for the UTF-8 encodings of code points lo..hi (no surrogates)."""
    out: list[ByteSeq] = []
    for blo, bhi, n in ((0, 0x7F, 1), (0x80, 0x7FF, 2), (0x800, 0xFFFF, 3), (0x10000, 0x10FFFF, 4)):
        a, b = max(lo, blo), min(hi, bhi)
        if a <= b:
            out.extend(_utf8_split(a, b, n))
    return out


def _utf8_split(lo: int, hi: int, n: int) -> list[ByteSeq]:
    if n == 1:
        return [(_range_bits(lo, hi),)]
    # split so that every byte position is a contiguous range
    for i in range(1, n):
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:
            if lo & m != 0:
                return _utf8_split(lo, lo | m, n) + _utf8_split((lo | m) + 1, hi, n)
            if hi & m != m:
                return _utf8_split(lo, (hi & ~m) - 1, n) + _utf8_split(hi & ~m, hi, n)
    a = chr(lo).encode("utf-8")
    b = chr(hi).encode("utf-8")
    return [tuple(_range_bits(x, y) for x, y in zip(a, b, strict=True))]


def json_char_seqs(cls: CharClass, escapes: str = "any") -> list[ByteSeq]:
    """JSON-string spellings of the characters of ``cls``: with ``escapes="any"`` every legal
    spelling; with ``"canonical"`` one per character (raw UTF-8 where allowed, ``\\"``,
    ``\\\\``, the short escapes for control characters, ``\\u00XX`` for the others)."""
    seqs: list[ByteSeq] = []
    if escapes == "canonical":
        for lo, hi in cc_intersect(cls, cc_normalize([(0x20, 0x21), (0x23, 0x5B), (0x5D, MAX_CP)])):
            seqs.extend(_utf8_seqs(lo, hi))
        backslash = _bits([0x5C])
        for cp, ch in _SHORT_ESCAPES.items():
            if cp != 0x2F and cc_contains(cls, cp):
                seqs.append((backslash, _bits(ch)))
        controls = [iv for iv in cc_intersect(cls, ((0, 0x1F),))]
        controls = [
            (lo, hi)
            for lo, hi in cc_normalize_raw(
                (c, c) for lo, hi in controls for c in range(lo, hi + 1) if c not in _SHORT_ESCAPES
            )
        ]
        seqs.extend((backslash, _bits(b"u"), *s) for s in _hex_seqs(controls, 4))
        return seqs
    raw = cc_intersect(cls, cc_normalize([(0x20, 0x21), (0x23, 0x5B), (0x5D, MAX_CP)]))
    for lo, hi in raw:
        seqs.extend(_utf8_seqs(lo, hi))
    backslash = _bits([0x5C])
    for cp, ch in _SHORT_ESCAPES.items():
        if cc_contains(cls, cp):
            seqs.append((backslash, _bits(ch)))
    prefix = (backslash, _bits(b"u"))
    bmp = [iv for iv in cc_intersect(cls, ((0, 0xFFFF),))]
    seqs.extend(prefix + s for s in _hex_seqs(bmp, 4))
    astral = cc_intersect(cls, ((0x10000, MAX_CP),))
    # surrogate pairs, grouped by the set of low surrogates allowed after each high one
    by_low: dict[tuple, list[tuple[int, int]]] = {}
    for lo, hi in astral:
        h_lo, h_hi = 0xD800 + ((lo - 0x10000) >> 10), 0xD800 + ((hi - 0x10000) >> 10)
        for h in (h_lo, h_hi) if h_lo != h_hi else (h_lo,):
            base = 0x10000 + ((h - 0xD800) << 10)
            a, b = max(lo, base), min(hi, base + 0x3FF)
            key = ((0xDC00 + a - base, 0xDC00 + b - base),)
            by_low.setdefault(key, []).append((h, h))
        if h_hi - h_lo >= 2:
            by_low.setdefault(((0xDC00, 0xDFFF),), []).append((h_lo + 1, h_hi - 1))
    for low, highs in by_low.items():
        merged = list(cc_normalize_raw(highs))
        for hs in _hex_seqs(merged, 4):
            for ls in _hex_seqs(list(low), 4):
                seqs.append(prefix + hs + prefix + ls)
    return seqs


def cc_normalize_raw(intervals: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Merge intervals without removing surrogates (used for surrogate code units)."""
    items = sorted(intervals)
    out: list[tuple[int, int]] = []
    for lo, hi in items:
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


# ---------------------------------------------------------------------------------------
# byte DFA
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

    @property
    def size(self) -> int:
        return len(self.rows)

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
    quote = _bits([0x22])
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
                        else [seq for lo, hi in cls for seq in _utf8_seqs(lo, hi)]
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
