"""JSON spellings of a character class as sequences of byte sets (bit b of an int = byte b).

A ``ByteSeq`` is one spelling shape: position i may be any byte of set i. ``json_char_seqs``
gives every spelling JSON allows inside a string (or one canonical spelling per character);
``utf8_seqs`` gives the raw UTF-8 encodings.
"""

from __future__ import annotations

from collections.abc import Iterable

from .charclass import MAX_CP, CharClass, cc_contains, cc_intersect, cc_normalize, cc_normalize_raw


def bits(values: Iterable[int]) -> int:
    m = 0
    for v in values:
        m |= 1 << v
    return m


def _range_bits(lo: int, hi: int) -> int:
    return ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)


_HEX_DIGIT_BITS = [bits([ord("0") + d]) if d < 10 else bits([ord("a") + d - 10, ord("A") + d - 10]) for d in range(16)]
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
        return [tuple(bits(b for d in range(16) for b in _hex_digit_bytes(d)) for _ in range(width))]
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


def utf8_seqs(lo: int, hi: int) -> list[ByteSeq]:
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
            seqs.extend(utf8_seqs(lo, hi))
        backslash = bits([0x5C])
        for cp, ch in _SHORT_ESCAPES.items():
            if cp != 0x2F and cc_contains(cls, cp):
                seqs.append((backslash, bits(ch)))
        controls = [iv for iv in cc_intersect(cls, ((0, 0x1F),))]
        controls = [
            (lo, hi)
            for lo, hi in cc_normalize_raw(
                (c, c) for lo, hi in controls for c in range(lo, hi + 1) if c not in _SHORT_ESCAPES
            )
        ]
        seqs.extend((backslash, bits(b"u"), *s) for s in _hex_seqs(controls, 4))
        return seqs
    raw = cc_intersect(cls, cc_normalize([(0x20, 0x21), (0x23, 0x5B), (0x5D, MAX_CP)]))
    for lo, hi in raw:
        seqs.extend(utf8_seqs(lo, hi))
    backslash = bits([0x5C])
    for cp, ch in _SHORT_ESCAPES.items():
        if cc_contains(cls, cp):
            seqs.append((backslash, bits(ch)))
    prefix = (backslash, bits(b"u"))
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
