"""Grammar nodes: the pieces a compiled grammar is made of, and how each consumes bytes.

A matcher state is a set of *stacks*; a stack is a linked tuple ``((node_id, local), rest)``
whose top frame consumes the next byte. Each node implements:

* ``start(depth)`` -> initial locals;
* ``step(local, byte)`` -> actions: ``(STAY, new_local)`` or ``(CALL, alt_id, waiting_local,
  depth)``, the latter pushing a child (any node of the alternative) that consumes the byte;
* ``result(local)`` -> a label (int >= 0) when the node may end here, else ``None``;
* ``resume(waiting_local, label)`` -> the parent's local once a child ended with ``label``.

Popping is lazy: a finished child stays on the stack until a byte it cannot take arrives.
Every reachable configuration can be completed (nodes only offer transitions that keep a
completion possible, and unsatisfiable alternatives are removed before matching), so the
matcher never dead-ends.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

from .automata import ByteDFA

if TYPE_CHECKING:
    from .grammar import GrammarCore

STAY = 0
CALL = 1

WS_BYTES = frozenset(b" \t\n\r")


class Node:
    core: GrammarCore

    def start(self, depth: int) -> list:
        raise NotImplementedError

    def step(self, local, b: int) -> list:
        raise NotImplementedError

    def result(self, local) -> int | None:
        raise NotImplementedError

    def resume(self, waiting, label: int):
        return waiting

    def satisfiable(self, sat_alt) -> bool:
        return True


class LeafNode(Node):
    """A byte DFA: strings, keys, literals."""

    def __init__(self, dfa: ByteDFA) -> None:
        self.dfa = dfa
        self.rows = dfa.rows
        self.labels = dfa.labels

    def start(self, depth: int) -> list:
        return [self.dfa.start]

    def step(self, local, b: int) -> list:
        t = self.rows[local][b]
        return [(STAY, t)] if t >= 0 else []

    def result(self, local) -> int | None:
        lab = self.labels[local]
        return lab if lab >= 0 else None

    def satisfiable(self, sat_alt) -> bool:
        return any(lab >= 0 for lab in self.labels)


class KeyLeafNode(LeafNode):
    """An object-key leaf: the product of per-key component DFAs (one per named key, one per
    pattern, one for "any other string"), labelled for one set of already-seen keys.

    ``comp_states[q]`` gives each component's state in product state ``q``; ``useful[c]``
    says whether component ``c`` can still lead to an accepted key (so the tokens it keeps
    alive are allowed); ``comp_tags[c]`` is what component ``c`` reports on acceptance and
    ``combine(tags)`` the product label (-1: rejected). ``decomposable`` is False when a
    per-component view would not be exact (then the product DFA is used as a whole).
    """

    def __init__(self, dfa: ByteDFA, comp_states, components, comp_tags, useful, combine, decomposable: bool):
        super().__init__(dfa)
        self.comp_states = comp_states
        self.components = components
        self.comp_tags = comp_tags
        self.useful = useful
        self.combine = combine
        self.decomposable = decomposable


class CountedStringNode(LeafNode):
    """A string of any characters with minLength/maxLength, as the shared any-string DFA plus a
    character counter (instead of a DFA per count: every count would need its own masks).

    Local: (DFA state, characters so far, capped at ``min_len`` when there is no maximum).
    A character is complete whenever the DFA returns to ``boundary`` (the state after the
    opening quote). A step is allowed only if the count stays within bounds, counting a
    character in progress, and the closing quote only once ``min_len`` is reached.
    """

    def __init__(self, dfa: ByteDFA, min_len: int, max_len: int | None) -> None:
        super().__init__(dfa)
        self.min_len = min_len
        self.max_len = max_len
        self.boundary = dfa.rows[dfa.start][0x22]

    def start(self, depth: int) -> list:
        return [(self.dfa.start, 0)]

    def step(self, local, b: int) -> list:
        q, c = local
        t = self.rows[q][b]
        if t < 0:
            return []
        if self.labels[t] >= 0:
            return [(STAY, (t, c))] if c >= self.min_len else []
        if t == self.boundary and q != self.dfa.start:
            c += 1
        need = c if t == self.boundary else c + 1
        if self.max_len is not None:
            if need > self.max_len:
                return []
        else:
            c = min(c, self.min_len)
        return [(STAY, (t, c))]

    def result(self, local) -> int | None:
        lab = self.labels[local[0]]
        return lab if lab >= 0 else None

    def satisfiable(self, sat_alt) -> bool:
        return self.max_len is None or self.min_len <= self.max_len


# ---------------------------------------------------------------------------------------
# numbers
_NUMBER_BYTES = frozenset(b"0123456789.-+eE")


class NumberNode(Node):
    """A JSON number, optionally integer-valued and/or bounded.

    Local state is the text read so far. Unbounded non-integer numbers take the full JSON
    syntax (fraction and exponent); integer or bounded numbers take no exponent, so that
    whether a prefix can still reach an allowed value is an interval computation.
    Integers may carry a zero fraction (``1.0`` is an integer in JSON Schema).
    """

    def __init__(self, integer: bool, lo: Fraction | None, lo_excl: bool, hi: Fraction | None, hi_excl: bool):
        self.integer = integer
        self.lo, self.lo_excl, self.hi, self.hi_excl = lo, lo_excl, hi, hi_excl
        self.exponent = not integer and lo is None and hi is None

    def start(self, depth: int) -> list:
        return [""]

    def satisfiable(self, sat_alt) -> bool:
        return self._intersects(None, False, None, False)

    def result(self, local) -> int | None:
        return 0 if self._complete(local) else None

    def step(self, local, b: int) -> list:
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


# ---------------------------------------------------------------------------------------
# containers
class Layout:
    """Whitespace policy: ``compact`` (none), ``flexible`` (any run of JSON whitespace at
    every place JSON allows it inside containers), ``pretty`` (``json.dumps(indent=n)``)."""

    def __init__(self, mode: str, indent: int = 2) -> None:
        if mode not in ("compact", "flexible", "pretty"):
            raise ValueError(f"whitespace={mode!r}: expected 'compact', 'flexible' or 'pretty'")
        self.mode = mode
        self.indent = indent

    def newline(self, depth: int) -> bytes:
        return b"\n" + b" " * (self.indent * depth)


# Object phases
O_OPEN, O_KEY_WAIT, O_COLON, O_VALUE_WAIT, O_AFTER_VALUE, O_BEFORE_KEY, O_DONE = range(7)
# Array phases
A_OPEN, A_ITEM_WAIT, A_AFTER_ITEM, A_BEFORE_ITEM, A_DONE = range(5)


class ObjectNode(Node):
    """Properties in any order, each named key at most once.

    ``named``: property names (declared properties plus required names), with
    ``named_alts[i]`` the alternative for its value. ``key_outcomes`` (built by the compiler
    per set of seen names) give the key leaf and, per label, (named index or -1, value alt).
    Local state: (phase, seen bitmask, depth, ws progress, value alt).
    """

    def __init__(self, named: list[str], required_mask: int) -> None:
        self.named = named
        self.required_mask = required_mask
        self.key_leaf_for_seen = None  # set by the compiler: seen -> (leaf alt id, outcomes)

    def start(self, depth: int) -> list:
        return [(-1, 0, depth, 0, -1)]  # before "{"

    def result(self, local) -> int | None:
        return 0 if local[0] == O_DONE else None

    def resume(self, waiting, label: int):
        phase, seen, depth, _, _ = waiting
        if phase == O_KEY_WAIT:
            _, outcomes = self.key_leaf_for_seen(seen)
            named_index, value_alt = outcomes[label]
            if named_index >= 0:
                seen |= 1 << named_index
            return (O_COLON, seen, depth, 0, value_alt)
        return (O_AFTER_VALUE, seen, depth, 0, -1)

    def _can_add_key(self, seen: int) -> bool:
        leaf_alt, _ = self.key_leaf_for_seen(seen)
        return leaf_alt is not None

    def step(self, local, b: int) -> list:
        phase, seen, depth, ws, value_alt = local
        layout = self.core.layout
        if phase == -1:
            return [(STAY, (O_OPEN, seen, depth, 0, -1))] if b == 0x7B else []
        out = []
        if phase in (O_OPEN, O_BEFORE_KEY, O_AFTER_VALUE):
            closing = phase != O_BEFORE_KEY and (seen & self.required_mask) == self.required_mask
            opening_key = phase != O_AFTER_VALUE and self._can_add_key(seen)
            if layout.mode == "pretty":
                member_ws = layout.newline(depth + 1)
                close_ws = b"" if phase == O_OPEN else layout.newline(depth)
                if opening_key and ws < len(member_ws) and member_ws[ws] == b:
                    out.append((STAY, (phase, seen, depth, ws + 1, -1)))
                if (
                    closing
                    and ws < len(close_ws)
                    and close_ws[ws] == b
                    and not (opening_key and member_ws[: ws + 1] == close_ws[: ws + 1])
                ):
                    out.append((STAY, (phase, seen, depth, ws + 1, -1)))
                if opening_key and ws == len(member_ws) and b == 0x22:
                    leaf_alt, _ = self.key_leaf_for_seen(seen)
                    out.append((CALL, leaf_alt, (O_KEY_WAIT, seen, depth, 0, -1), depth + 1))
                if closing and ws == len(close_ws) and b == 0x7D:
                    out.append((STAY, (O_DONE, seen, depth, 0, -1)))
                if phase == O_AFTER_VALUE and ws == 0 and b == 0x2C and self._can_add_key(seen):
                    out.append((STAY, (O_BEFORE_KEY, seen, depth, 0, -1)))
                return out
            if layout.mode == "flexible" and b in WS_BYTES:
                return [(STAY, local)]
            if b == 0x22 and opening_key:
                leaf_alt, _ = self.key_leaf_for_seen(seen)
                return [(CALL, leaf_alt, (O_KEY_WAIT, seen, depth, 0, -1), depth + 1)]
            if b == 0x7D and closing:
                return [(STAY, (O_DONE, seen, depth, 0, -1))]
            if b == 0x2C and phase == O_AFTER_VALUE and self._can_add_key(seen):
                return [(STAY, (O_BEFORE_KEY, seen, depth, 0, -1))]
            return []
        if phase == O_COLON:
            if layout.mode == "pretty":
                if ws == 0:
                    return [(STAY, (O_COLON, seen, depth, 1, value_alt))] if b == 0x3A else []
                if ws == 1:
                    return [(STAY, (O_COLON, seen, depth, 2, value_alt))] if b == 0x20 else []
                return [(CALL, value_alt, (O_VALUE_WAIT, seen, depth, 0, -1), depth + 1)]
            if layout.mode == "flexible" and b in WS_BYTES:
                return [(STAY, local)]
            if ws == 0:
                return [(STAY, (O_COLON, seen, depth, 1, value_alt))] if b == 0x3A else []
            return [(CALL, value_alt, (O_VALUE_WAIT, seen, depth, 0, -1), depth + 1)]
        return []

    def satisfiable(self, sat_alt) -> bool:
        return all(sat_alt(a) for i, a in enumerate(self.named_alts) if self.required_mask >> i & 1)


class ArrayNode(Node):
    """``item_alts[i]`` for the first items (prefixItems), then ``rest_alt`` (None: no more
    items). Local: (phase, count capped at ``cap``, depth, ws progress)."""

    def __init__(self, item_alts: list[int], rest_alt: int | None, min_items: int, max_items: int | None):
        self.item_alts = item_alts
        self.rest_alt = rest_alt
        self.min_items = min_items
        self.max_items = max_items
        self.cap = max(len(item_alts), min_items) if max_items is None else max_items

    def alt_at(self, i: int) -> int | None:
        return self.item_alts[i] if i < len(self.item_alts) else self.rest_alt

    def start(self, depth: int) -> list:
        return [(-1, 0, depth, 0)]

    def result(self, local) -> int | None:
        return 0 if local[0] == A_DONE else None

    def resume(self, waiting, label: int):
        _, count, depth, _ = waiting
        return (A_AFTER_ITEM, min(count + 1, self.cap) if self.max_items is None else count + 1, depth, 0)

    def _next_item(self, count: int) -> int | None:
        if self.max_items is not None and count >= self.max_items:
            return None
        alt = self.alt_at(count)
        if alt is None or not self.core.alt_nonempty(alt):
            return None
        return alt

    def step(self, local, b: int) -> list:
        phase, count, depth, ws = local
        layout = self.core.layout
        if phase == -1:
            return [(STAY, (A_OPEN, 0, depth, 0))] if b == 0x5B else []
        if phase in (A_OPEN, A_BEFORE_ITEM, A_AFTER_ITEM):
            closing = phase != A_BEFORE_ITEM and count >= self.min_items
            item = self._next_item(count) if phase != A_AFTER_ITEM else None
            comma = phase == A_AFTER_ITEM and self._next_item(count) is not None
            if layout.mode == "pretty":
                out = []
                member_ws = layout.newline(depth + 1)
                close_ws = b"" if phase == A_OPEN else layout.newline(depth)
                if item is not None and ws < len(member_ws) and member_ws[ws] == b:
                    out.append((STAY, (phase, count, depth, ws + 1)))
                if (
                    closing
                    and ws < len(close_ws)
                    and close_ws[ws] == b
                    and not (item is not None and member_ws[: ws + 1] == close_ws[: ws + 1])
                ):
                    out.append((STAY, (phase, count, depth, ws + 1)))
                if item is not None and ws == len(member_ws):
                    out.append((CALL, item, (A_ITEM_WAIT, count, depth, 0), depth + 1))
                if closing and ws == len(close_ws) and b == 0x5D:
                    out.append((STAY, (A_DONE, count, depth, 0)))
                if comma and ws == 0 and b == 0x2C:
                    out.append((STAY, (A_BEFORE_ITEM, count, depth, 0)))
                return out
            if layout.mode == "flexible" and b in WS_BYTES:
                return [(STAY, local)]
            out = []
            if b == 0x5D and closing:
                out.append((STAY, (A_DONE, count, depth, 0)))
            if b == 0x2C and comma:
                out.append((STAY, (A_BEFORE_ITEM, count, depth, 0)))
            if item is not None:
                out.append((CALL, item, (A_ITEM_WAIT, count, depth, 0), depth + 1))
            return out
        return []

    def satisfiable(self, sat_alt) -> bool:
        for i in range(self.min_items):
            alt = self.alt_at(i)
            if alt is None or not sat_alt(alt):
                return False
        return True


class RootNode(Node):
    """Calls the top-level alternative once; ends after it."""

    def __init__(self, alt: int, allow_empty: bool = False) -> None:
        self.alt = alt
        self.allow_empty = allow_empty  # raw-text grammars (regex) may match the empty string

    def start(self, depth: int) -> list:
        return [0]

    def step(self, local, b: int) -> list:
        if local == 0:
            return [(CALL, self.alt, 1, 0)]
        return []

    def result(self, local) -> int | None:
        return 0 if local == 1 or self.allow_empty else None
