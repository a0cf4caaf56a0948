"""The JSON number node: exact reasoning about bounds on a prefix of a number.

A local is the text read so far. A step is offered only when the prefix can still become an
allowed number, so a number never dead-ends (see ``nodes`` for the node contract).
"""

from __future__ import annotations

from fractions import Fraction

from .nodes import STAY, Action, Node, SatAlt

_NUMBER_BYTES = frozenset(b"0123456789.-+eE")


class NumberNode(Node):
    """A JSON number, optionally integer-valued and/or bounded.

    Local state is the text read so far. Unbounded non-integer numbers take the full JSON
    syntax (fraction and exponent); integer or bounded numbers take no exponent, so that
    whether a prefix can still reach an allowed value is an interval computation.
    Integers may carry a zero fraction (``1.0`` is an integer in JSON Schema).
    """

    def __init__(self, integer: bool, lo: Fraction | None, lo_excl: bool, hi: Fraction | None, hi_excl: bool) -> None:
        self.integer = integer
        self.lo, self.lo_excl, self.hi, self.hi_excl = lo, lo_excl, hi, hi_excl
        self.exponent = not integer and lo is None and hi is None

    def start(self, depth: int) -> list[str]:
        return [""]

    def satisfiable(self, sat_alt: SatAlt) -> bool:
        return self._intersects(None, False, None, False)

    def result(self, local: str) -> int | None:
        return 0 if self._complete(local) else None

    def within_bounds(self, value: Fraction) -> bool:
        """Is ``value`` within the bounds (integrality aside unless ``integer``)?"""
        return self._intersects(value, True, value, True)

    def step(self, local: str, b: int) -> list[Action]:
        if b not in _NUMBER_BYTES:
            return []
        nxt = local + chr(b)
        return [(STAY, nxt)] if self._syntax_ok(nxt) and self._viable(nxt) else []

    # -- syntax: prefixes of -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    def _syntax_ok(self, s: str) -> bool:
        i = 0
        n = len(s)
        if i < n and s[i] == "-":
            i += 1
        if i == n:
            return True
        if s[i] == "0":
            i += 1
        elif s[i] in "123456789":
            while i < n and s[i] in "0123456789":
                i += 1
        else:
            return False
        if i == n:
            return True
        if s[i] == ".":
            i += 1
            j = i
            while i < n and s[i] in "0123456789":
                i += 1
            if i == n:
                return True
            if i == j:
                return False
        if s[i] in "eE" and self.exponent:
            i += 1
            if i < n and s[i] in "+-":
                i += 1
            while i < n and s[i] in "0123456789":
                i += 1
            return i == n
        return False

    def _complete(self, s: str) -> bool:
        if not s or s[-1] not in "0123456789" or not self._syntax_ok(s):
            return False
        if self.exponent:
            return True
        value = Fraction(s)
        if self.integer and value.denominator != 1:
            return False
        return self._intersects(value, True, value, True)

    def _intersects(self, a: Fraction | None, a_closed: bool, b: Fraction | None, b_closed: bool) -> bool:
        """Does the interval from a to b (None: unbounded) meet the allowed values?"""
        s, s_closed = a, a_closed
        if self.lo is not None:
            lo_closed = not self.lo_excl
            if s is None or self.lo > s:
                s, s_closed = self.lo, lo_closed
            elif self.lo == s:
                s_closed = s_closed and lo_closed
        e, e_closed = b, b_closed
        if self.hi is not None:
            hi_closed = not self.hi_excl
            if e is None or self.hi < e:
                e, e_closed = self.hi, hi_closed
            elif self.hi == e:
                e_closed = e_closed and hi_closed
        if s is not None and e is not None and (s > e or (s == e and not (s_closed and e_closed))):
            return False
        if not self.integer or s is None or e is None:
            return True
        first = Fraction(s.__ceil__())
        if first == s and not s_closed:
            first += 1
        return first < e or (first == e and e_closed)

    def _signed(self, neg: bool, a: Fraction, a_closed: bool, b: Fraction | None, b_closed: bool) -> bool:
        """Magnitudes from a to b (None: unbounded) taken with the given sign."""
        if not neg:
            return self._intersects(a, a_closed, b, b_closed)
        return self._intersects(None if b is None else -b, b_closed, -a, a_closed)

    def _viable(self, s: str) -> bool:
        """Can the prefix ``s`` still be completed into an allowed number?"""
        if self.exponent:
            return True
        neg = s.startswith("-")
        body = s[1:] if neg else s
        if not body:
            return self._signed(neg, Fraction(0), True, None, False)
        if "." in body:
            ip, fp = body.split(".", 1)
            base = Fraction(int(ip)) + (Fraction(int(fp), 10 ** len(fp)) if fp else 0)
            if self.integer:
                return not fp.strip("0") and self._signed(neg, base, True, base, True)
            width = Fraction(1, 10 ** len(fp))
            return self._signed(neg, base, True, base + width, False)
        d = int(body)
        if self.integer:
            if self._signed(neg, Fraction(d), True, Fraction(d), True):
                return True
        elif self._signed(neg, Fraction(d), True, Fraction(d + 1), False):
            return True
        if d == 0:
            return False
        bounds = [abs(x) for x in (self.lo, self.hi) if x is not None]
        if not bounds:
            return True
        limit = max(bounds)
        k = 1
        while d * 10**k <= limit:
            if self._signed(neg, Fraction(d * 10**k), True, Fraction((d + 1) * 10**k), False):
                return True
            k += 1
        return self._signed(neg, Fraction(d * 10**k), True, Fraction((d + 1) * 10**k), False)
