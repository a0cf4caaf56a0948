"""Character classes: tuples of disjoint, sorted, inclusive code-point intervals.

Surrogate code points (U+D800..U+DFFF) are never members of a class built by
``cc_normalize``: astral characters are reached through surrogate-pair escapes instead
(``cc_normalize_raw`` keeps them, for surrogate code units).
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_CP = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)
CharClass = tuple[tuple[int, int], ...]


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
