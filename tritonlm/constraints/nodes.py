"""Grammar nodes: the pieces a compiled grammar is made of, and how each consumes bytes.

A matcher state is a set of *stacks*; a stack is a linked tuple ``((node_id, local), rest)``
whose top frame consumes the next byte. Each node implements:

* ``start(depth)`` -> initial locals;
* ``step(local, byte)`` -> actions: ``(STAY, new_local)`` or ``(CALL, alt_id, waiting_local,
  depth)``, the latter pushing a child (any node of the alternative) that consumes the byte;
* ``result(local)`` -> a label (int >= 0) when the node may end here, else ``None``;
* ``resume(waiting_local, label)`` -> the parent's local once a child ended with ``label``.

A local is a node's own hashable value (an int, a tuple or a str, per node class); the
grammar stores it without looking inside. Popping is lazy: a finished child stays on the
stack until a byte it cannot take arrives. Every reachable configuration can be completed
(nodes only offer transitions that keep a completion possible, and unsatisfiable
alternatives are removed before matching), so the matcher never dead-ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .bytedfa import ByteDFA

if TYPE_CHECKING:
    from .object_keys import KeyLabels, ObjectKeys

STAY = 0
CALL = 1

WS_BYTES = frozenset(b" \t\n\r")

Local = Any  # a node's own hashable state (see the module docstring)
Action = tuple[Any, ...]  # (STAY, local) | (CALL, alt_id, waiting_local, depth)
SatAlt = Callable[[int], bool]  # is an alternative satisfiable (during the fixpoint)?
Frame = tuple[int, Local]  # (node id, local)
Stack = tuple[Frame, "Stack | None"]  # top frame first; None below the root
KeyTag = tuple[str, int]  # what a key component reports: ("lit", named index), ("p", pattern index), ANY_KEY
ANY_KEY: KeyTag = ("any", -1)


class NodeContext(Protocol):
    """What a node reads from the grammar it belongs to (set by ``GrammarCore.add_node``)."""

    layout: Layout

    def alt_nonempty(self, aid: int) -> bool: ...


class Node:
    core: NodeContext

    def start(self, depth: int) -> list[Local]:
        raise NotImplementedError

    def step(self, local: Local, b: int) -> list[Action]:
        raise NotImplementedError

    def result(self, local: Local) -> int | None:
        raise NotImplementedError

    def resume(self, waiting: Local, label: int) -> Local:
        return waiting

    def satisfiable(self, sat_alt: SatAlt) -> bool:
        return True


class LeafNode(Node):
    """A byte DFA: strings, keys, literals. Local: the DFA state."""

    def __init__(self, dfa: ByteDFA) -> None:
        self.dfa = dfa
        self.rows = dfa.rows
        self.labels = dfa.labels

    def start(self, depth: int) -> list[Local]:
        return [self.dfa.start]

    def step(self, local: Local, b: int) -> list[Action]:
        t = self.rows[local][b]
        return [(STAY, t)] if t >= 0 else []

    def result(self, local: Local) -> int | None:
        lab = self.labels[local]
        return lab if lab >= 0 else None

    def satisfiable(self, sat_alt: SatAlt) -> bool:
        return any(lab >= 0 for lab in self.labels)


class KeyLeafNode(LeafNode):
    """An object-key leaf: the product of per-key component DFAs (one per named key, one per
    pattern, one for "any other string"), labelled for one set of already-seen keys.

    ``comp_states[q]`` gives the live components' states in product state ``q`` as
    {component: state}; ``useful[c]``
    says whether component ``c`` can still lead to an accepted key (so the tokens it keeps
    alive are allowed); ``comp_tags[c]`` is what component ``c`` reports on acceptance and
    ``combine(tags)`` the product label (-1: rejected). ``decomposable`` is False when a
    per-component view would not be exact (then the product DFA is used as a whole).
    """

    def __init__(
        self,
        dfa: ByteDFA,
        comp_states: list[dict[int, int]],
        components: list[ByteDFA],
        comp_tags: list[KeyTag],
        useful: list[bool],
        labels: KeyLabels,
        decomposable: bool,
    ) -> None:
        super().__init__(dfa)
        self.comp_states = comp_states
        self.components = components
        self.comp_tags = comp_tags
        self.useful = useful
        self.key_labels = labels
        self.decomposable = decomposable

    def combine(self, tags: frozenset[KeyTag]) -> int:
        return self.key_labels.combine(tags)


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

    def start(self, depth: int) -> list[tuple[int, int]]:
        return [(self.dfa.start, 0)]

    def step(self, local: tuple[int, int], b: int) -> list[Action]:
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

    def result(self, local: tuple[int, int]) -> int | None:
        lab = self.labels[local[0]]
        return lab if lab >= 0 else None

    def satisfiable(self, sat_alt: SatAlt) -> bool:
        return self.max_len is None or self.min_len <= self.max_len


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

    ``keys`` (see ``object_keys.ObjectKeys``) holds the property names (declared properties
    plus required names, ``named``), the alternative for each one's value (``named_alts``)
    and, per set of seen names, the key leaf and per label (named index or -1, value alt).
    Local state: (phase, seen bitmask, depth, ws progress, value alt).
    """

    def __init__(self, keys: ObjectKeys) -> None:
        self.keys = keys
        self.named = keys.named
        self.required_mask = keys.required_mask

    def key_leaf_for_seen(self, seen: int) -> tuple[int | None, list[tuple[int, int]]]:
        """(alternative of the key leaf, or None when no key may follow; outcomes per label)."""
        return self.keys.leaf_for_seen(seen)

    def start(self, depth: int) -> list[Local]:
        return [(-1, 0, depth, 0, -1)]  # before "{"

    def result(self, local: Local) -> int | None:
        return 0 if local[0] == O_DONE else None

    def resume(self, waiting: Local, label: int) -> Local:
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

    def step(self, local: Local, b: int) -> list[Action]:
        phase, seen, depth, _, _ = local
        if phase == -1:
            return [(STAY, (O_OPEN, seen, depth, 0, -1))] if b == 0x7B else []
        if phase in (O_OPEN, O_BEFORE_KEY, O_AFTER_VALUE):
            if self.core.layout.mode == "pretty":
                return self._between_members_pretty(local, b)
            return self._between_members(local, b)
        if phase == O_COLON:
            return self._colon(local, b)
        return []

    def _between_members(self, local: Local, b: int) -> list[Action]:
        phase, seen, depth, _, _ = local
        closing = phase != O_BEFORE_KEY and (seen & self.required_mask) == self.required_mask
        opening_key = phase != O_AFTER_VALUE and self._can_add_key(seen)
        if self.core.layout.mode == "flexible" and b in WS_BYTES:
            return [(STAY, local)]
        if b == 0x22 and opening_key:
            leaf_alt, _ = self.key_leaf_for_seen(seen)
            return [(CALL, leaf_alt, (O_KEY_WAIT, seen, depth, 0, -1), depth + 1)]
        if b == 0x7D and closing:
            return [(STAY, (O_DONE, seen, depth, 0, -1))]
        if b == 0x2C and phase == O_AFTER_VALUE and self._can_add_key(seen):
            return [(STAY, (O_BEFORE_KEY, seen, depth, 0, -1))]
        return []

    def _between_members_pretty(self, local: Local, b: int) -> list[Action]:
        """``ws`` counts the bytes of the newline-and-indent written so far (before a member:
        one level deeper; before the closing brace: this object's level)."""
        phase, seen, depth, ws, _ = local
        layout = self.core.layout
        closing = phase != O_BEFORE_KEY and (seen & self.required_mask) == self.required_mask
        opening_key = phase != O_AFTER_VALUE and self._can_add_key(seen)
        member_ws = layout.newline(depth + 1)
        close_ws = b"" if phase == O_OPEN else layout.newline(depth)
        out: list[Action] = []
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

    def _colon(self, local: Local, b: int) -> list[Action]:
        _, seen, depth, ws, value_alt = local
        mode = self.core.layout.mode
        if mode == "flexible" and b in WS_BYTES:
            return [(STAY, local)]
        if ws == 0:
            return [(STAY, (O_COLON, seen, depth, 1, value_alt))] if b == 0x3A else []
        if mode == "pretty" and ws == 1:
            return [(STAY, (O_COLON, seen, depth, 2, value_alt))] if b == 0x20 else []
        return [(CALL, value_alt, (O_VALUE_WAIT, seen, depth, 0, -1), depth + 1)]

    def satisfiable(self, sat_alt: SatAlt) -> bool:
        return all(sat_alt(a) for i, a in enumerate(self.keys.named_alts) if self.required_mask >> i & 1)


class ArrayNode(Node):
    """``item_alts[i]`` for the first items (prefixItems), then ``rest_alt`` (None: no more
    items). Local: (phase, count capped at ``cap``, depth, ws progress)."""

    def __init__(self, item_alts: list[int], rest_alt: int | None, min_items: int, max_items: int | None) -> None:
        self.item_alts = item_alts
        self.rest_alt = rest_alt
        self.min_items = min_items
        self.max_items = max_items
        self.cap = max(len(item_alts), min_items) if max_items is None else max_items

    def alt_at(self, i: int) -> int | None:
        return self.item_alts[i] if i < len(self.item_alts) else self.rest_alt

    def start(self, depth: int) -> list[Local]:
        return [(-1, 0, depth, 0)]

    def result(self, local: Local) -> int | None:
        return 0 if local[0] == A_DONE else None

    def resume(self, waiting: Local, label: int) -> Local:
        _, count, depth, _ = waiting
        return (A_AFTER_ITEM, min(count + 1, self.cap) if self.max_items is None else count + 1, depth, 0)

    def _next_item(self, count: int) -> int | None:
        if self.max_items is not None and count >= self.max_items:
            return None
        alt = self.alt_at(count)
        if alt is None or not self.core.alt_nonempty(alt):
            return None
        return alt

    def step(self, local: Local, b: int) -> list[Action]:
        phase, count, depth, _ = local
        if phase == -1:
            return [(STAY, (A_OPEN, 0, depth, 0))] if b == 0x5B else []
        if phase not in (A_OPEN, A_BEFORE_ITEM, A_AFTER_ITEM):
            return []
        closing = phase != A_BEFORE_ITEM and count >= self.min_items
        item = self._next_item(count) if phase != A_AFTER_ITEM else None
        comma = phase == A_AFTER_ITEM and self._next_item(count) is not None
        if self.core.layout.mode == "pretty":
            return self._between_items_pretty(local, b, closing, item, comma)
        if self.core.layout.mode == "flexible" and b in WS_BYTES:
            return [(STAY, local)]
        out: list[Action] = []
        if b == 0x5D and closing:
            out.append((STAY, (A_DONE, count, depth, 0)))
        if b == 0x2C and comma:
            out.append((STAY, (A_BEFORE_ITEM, count, depth, 0)))
        if item is not None:
            out.append((CALL, item, (A_ITEM_WAIT, count, depth, 0), depth + 1))
        return out

    def _between_items_pretty(self, local: Local, b: int, closing: bool, item: int | None, comma: bool) -> list[Action]:
        """``ws`` counts the newline-and-indent bytes written so far (as for objects)."""
        phase, count, depth, ws = local
        layout = self.core.layout
        member_ws = layout.newline(depth + 1)
        close_ws = b"" if phase == A_OPEN else layout.newline(depth)
        out: list[Action] = []
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

    def satisfiable(self, sat_alt: SatAlt) -> bool:
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

    def start(self, depth: int) -> list[Local]:
        return [0]

    def step(self, local: Local, b: int) -> list[Action]:
        if local == 0:
            return [(CALL, self.alt, 1, 0)]
        return []

    def result(self, local: Local) -> int | None:
        return 0 if local == 1 or self.allow_empty else None
