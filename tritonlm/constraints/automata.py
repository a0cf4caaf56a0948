"""Character-level automata: Thompson NFAs over character classes and their DFAs.

``CharDFA`` describes the *decoded* string (what a validator sees); ``bytedfa.string_byte_dfa``
turns one into a byte-level DFA over JSON text. Every ``CharDFA`` built here is pruned: each
state is reachable and can reach an accepting state (an empty language is one state that
accepts nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from .budget import SUBSET_UNIT, Budget, CompileBudget
from .charclass import ANY_CHAR, CharClass, cc_char, cc_contains, cc_intersect, cc_normalize


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


def _closure(nfa: CharNFA, states: Iterable[int], budget: Budget, construct: str) -> frozenset[int]:
    seen = set(states)
    todo = list(seen)
    while todo:
        s = todo.pop()
        budget.tick(construct)
        for t in nfa.eps[s]:
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return frozenset(seen)


def _split_targets(
    edges: Sequence[tuple[CharClass, int]], budget: Budget, construct: str
) -> list[tuple[CharClass, frozenset[int]]]:
    """Partition the union of the edge classes into classes with identical target sets."""
    points: set[int] = set()
    for cls, _ in edges:
        for lo, hi in cls:
            points.add(lo)
            points.add(hi + 1)
    bounds = sorted(points)
    groups: dict[frozenset[int], list[tuple[int, int]]] = {}
    for k in range(len(bounds) - 1):
        lo, hi = bounds[k], bounds[k + 1] - 1
        budget.tick(construct, len(edges))
        targets = frozenset(dst for cls, dst in edges if cc_contains(cls, lo))
        if targets:
            groups.setdefault(targets, []).append((lo, hi))
    return [(cc_normalize(iv), targets) for targets, iv in groups.items()]


def determinize(
    nfa: CharNFA,
    combine_tags: Callable[[frozenset[Hashable]], Hashable | None] | None = None,
    *,
    budget: Budget | None = None,
    construct: str = "a pattern",
) -> CharDFA:
    """Subset construction. ``combine_tags`` maps the set of accepting NFA tags in a subset to
    the DFA tag (default: any tag present -> True). Each new state is charged to ``budget``."""
    budget = budget if budget is not None else CompileBudget.unlimited()
    what = f"determinising {construct}"
    start = _closure(nfa, [nfa.start], budget, what)
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
        for cls, targets in _split_targets(edges, budget, what):
            nxt = _closure(nfa, targets, budget, what)
            if nxt not in index:
                budget.charge(construct, 1 + len(nxt) // SUBSET_UNIT)
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


def intersect(a: CharDFA, b: CharDFA, budget: Budget | None = None, construct: str = "a pattern") -> CharDFA:
    """The product automaton (both accept); each product state is charged to ``budget``."""
    budget = budget if budget is not None else CompileBudget.unlimited()
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
                    budget.charge(construct, 1)
                    index[key] = len(order)
                    order.append(key)
                row.append((cls, index[key]))
        trans.append(row)
    return prune(CharDFA(trans, accept))


def with_length(
    dfa: CharDFA, min_len: int, max_len: int | None, budget: Budget | None = None, construct: str = "a string"
) -> CharDFA:
    """Product with a character counter (saturating at ``min_len`` when there is no maximum);
    each product state is charged to ``budget``."""
    if min_len <= 0 and max_len is None:
        return dfa
    budget = budget if budget is not None else CompileBudget.unlimited()
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
                    budget.charge(construct, 1)
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


def literals_dfa(texts: Iterable[str], budget: Budget | None = None, construct: str = "a literal") -> CharDFA:
    nfa = CharNFA()
    nfa.start = nfa.new_state()
    for t in texts:
        literal_nfa(nfa, t, True)
    return determinize(nfa, budget=budget, construct=construct)


def any_string_dfa() -> CharDFA:
    return CharDFA([[(ANY_CHAR, 0)]], [True])
