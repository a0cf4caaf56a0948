"""Compile and mask budgets: how long one compile (or one token mask) may run and how large
the automata and expansions it builds may get.

``CompileLimits`` is the policy (frozen); a ``CompileBudget`` is one compile's running account
of it (the clock starts at construction). Every loop of the compile that can run long checks
the budget while it runs, so an over-budget compile stops within a few milliseconds of its
deadline: ``charge`` when it builds something that costs size, ``tick`` per unit of work (a
clock read every ``CHECK_EVERY`` ticks), ``check`` at coarser points.

Size is counted in *units*, a proxy for the memory a compile builds (about 1 KB each, so
the default 200,000 is on the order of 200 MB, what the largest schemas in use need):

* one state of a character automaton (a regex NFA after counted repeats are expanded, a
  product with another pattern or with a minLength/maxLength counter): 1 unit; a state of a
  pattern's DFA also costs 1 unit per ``SUBSET_UNIT`` NFA states in its subset;
* one state of a byte automaton (JSON string text, literals, object keys and their product;
  a 256-entry row kept as a numpy table and a Python list, 3-5 KB): ``BYTE_STATE_UNITS``;
* each compiled subschema, enum/const value node, object property, ``anyOf``/``oneOf``
  branch and array prefix item: 1 unit.

A regex is charged its fully expanded NFA size before it is built, so ``(a{1,1000}){1,1000}``
fails at once instead of allocating a million states. Budgets are passed explicitly (an
argument or an attribute of the compile's own objects); nothing here is global.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tritonlm.errors import CompileCancelled, ConfigError, SchemaBudgetError

MAX_NESTING = 128  # subschema levels (and JSON container levels of a schema document or value)
BYTE_STATE_UNITS = 3  # size units one byte-automaton state costs
SUBSET_UNIT = 16  # NFA states of a determinisation subset per extra size unit
CHECK_EVERY = 1024  # ticks between two reads of the clock
YIELD_EVERY_S = 0.0005  # how often a running compile offers the GIL to other threads (check)


@dataclass(frozen=True)
class CompileLimits:
    """``max_seconds``: wall time of one compile (the start state's token mask included);
    ``max_size``: size units one compile may build (see the module docstring);
    ``max_mask_seconds``: wall time of one later state's first token mask (masks already
    computed are lookups)."""

    max_seconds: float = 10.0
    max_size: int = 200_000
    max_mask_seconds: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_seconds", "max_mask_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"CompileLimits.{name}={value!r}: must be a positive number of seconds")
        if isinstance(self.max_size, bool) or not isinstance(self.max_size, int) or self.max_size < 1:
            raise ConfigError(f"CompileLimits.max_size={self.max_size!r}: must be a positive integer")


class Budget(Protocol):
    """What the compile's loops call (``CompileBudget``, ``MaskBudget``)."""

    def check(self, construct: str) -> None: ...

    def charge(self, construct: str, units: int) -> None: ...

    def tick(self, construct: str, n: int = 1) -> None: ...


class CompileBudget:
    """One compile's budget. ``construct`` names what is being built and its JSON pointer
    (``"the pattern at /properties/x/pattern"``); it goes into the error message.

    ``check`` raises ``CompileCancelled`` once ``cancelled()`` is true, and
    ``SchemaBudgetError`` once ``limits.max_seconds`` have passed since construction;
    ``charge`` adds size (``SchemaBudgetError`` past ``limits.max_size``) and checks;
    ``tick`` counts work and checks every ``CHECK_EVERY`` ticks. Used by one thread.
    """

    def __init__(self, limits: CompileLimits | None = None, *, cancelled: Callable[[], bool] | None = None) -> None:
        self.limits = limits if limits is not None else CompileLimits()
        self.cancelled = cancelled
        self.started = time.monotonic()
        self.deadline = self.started + self.limits.max_seconds
        self.size = 0
        self._ticks = 0
        self._yielded = self.started

    @classmethod
    def unlimited(cls) -> CompileBudget:
        """No limits (internal builds outside any request)."""
        return cls(CompileLimits(max_seconds=math.inf, max_size=sys.maxsize, max_mask_seconds=math.inf))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def check(self, construct: str) -> None:
        if self.cancelled is not None and self.cancelled():
            raise CompileCancelled(f"compile cancelled while {_activity(construct)}")
        now = time.monotonic()
        if now - self._yielded > YIELD_EVERY_S:
            # A compile runs on a worker thread beside the step loop, whose torch ops each let go
            # of the GIL and must win it back: against a thread that only gives it up every
            # switch interval (5 ms), a step of a few hundred ops waited over a second. Offering
            # the GIL here keeps each of those waits near this interval instead.
            self._yielded = now
            time.sleep(0)
        if now > self.deadline:
            raise SchemaBudgetError(
                f"schema too complex: the compile took more than {self.limits.max_seconds:g} s "
                f"(compile time budget) while {_activity(construct)}"
            )

    def charge(self, construct: str, units: int) -> None:
        self.size += units
        if self.size > self.limits.max_size:
            raise SchemaBudgetError(
                f"schema too complex: {construct} needs more than {self.limits.max_size} size units "
                "(automaton states, subschemas, properties, enum members; compile size budget)"
            )
        self.check(construct)

    def tick(self, construct: str, n: int = 1) -> None:
        self._ticks += n
        if self._ticks >= CHECK_EVERY:
            self._ticks = 0
            self.check(construct)


class MaskBudget:
    """The time budget of one token mask computed during decoding (``what`` names the grammar
    in the message). Size is not limited here (``charge`` only counts work)."""

    def __init__(self, max_seconds: float, what: str) -> None:
        self.max_seconds = max_seconds
        self.what = what
        self.deadline = time.monotonic() + max_seconds
        self._ticks = 0

    def check(self, construct: str) -> None:
        if time.monotonic() > self.deadline:
            raise SchemaBudgetError(
                f"grammar too complex: a token mask of {self.what} took more than {self.max_seconds:g} s "
                f"(mask time budget) while {_activity(construct, 'computing')}"
            )

    def charge(self, construct: str, units: int) -> None:
        self.tick(construct, units)

    def tick(self, construct: str, n: int = 1) -> None:
        self._ticks += n
        if self._ticks >= CHECK_EVERY:
            self._ticks = 0
            self.check(construct)


def _activity(construct: str, verb: str = "compiling") -> str:
    """``construct`` as what was going on: "determinising the pattern at /p" stays as it is,
    "the enum at /enum" becomes "compiling the enum at /enum"."""
    return construct if construct.split(" ", 1)[0].endswith("ing") else f"{verb} {construct}"


def json_depth_error(doc: object, what: str, limit: int = MAX_NESTING) -> str | None:
    """The JSON pointer of the first container of ``doc`` nested more than ``limit`` levels
    deep (iteratively, so the check itself cannot overflow the stack), or None."""
    if not isinstance(doc, (dict, list, tuple)):
        return None
    todo: list[tuple[dict[Any, Any] | list[Any] | tuple[Any, ...], str, int]] = [(doc, "", 1)]
    while todo:
        node, ptr, depth = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        if depth > limit:
            return f"{what} nested too deep at {ptr or '/'} (more than {limit} levels)"
        for k, v in items:
            if isinstance(v, (dict, list, tuple)):
                todo.append((v, ptr + "/" + str(k).replace("~", "~0").replace("/", "~1"), depth + 1))
    return None
