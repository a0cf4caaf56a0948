"""``oneOf`` support: proving the branches of a ``oneOf`` mutually exclusive.

A ``oneOf`` compiles as an ``anyOf`` when no value can match two branches. ``Exclusivity``
proves that pairwise from what the branches assert (disjoint types, disjoint const/enum
values, a required key one side forbids or constrains disjointly, disjoint number ranges);
where it cannot, it raises ``SchemaError`` rather than accept a grammar that is too wide.
"""

from __future__ import annotations

from typing import Any

from .budget import Budget
from .schema_base import TYPES, json_equal, kinds_of_types, schema_error, value_kind
from .schema_refs import SchemaMerger

Bound = tuple[float, bool]  # (value, exclusive)


class Exclusivity:
    def __init__(self, merger: SchemaMerger, budget: Budget) -> None:
        self.merger = merger
        self.budget = budget

    def _possible_kinds(self, s: Any) -> set[str]:
        if s is False:
            return set()
        if s is True or not isinstance(s, dict):
            return set(TYPES)
        kinds = set(TYPES)
        if "type" in s:
            kinds &= kinds_of_types([s["type"]] if isinstance(s["type"], str) else s["type"])
        if "const" in s:
            kinds &= {value_kind(s["const"])}
        if "enum" in s:
            kinds &= {value_kind(v) for v in s["enum"]}
        return kinds

    def _values(self, s: Any) -> list | None:
        if isinstance(s, dict):
            if "const" in s:
                return [s["const"]]
            if "enum" in s:
                return list(s["enum"])
        return None

    def disjoint(self, a: Any, b: Any, ptr: str, depth: int = 0) -> bool:
        a = self.merger.inline(a, ptr)
        b = self.merger.inline(b, ptr)
        if a is False or b is False:
            return True
        if depth > 4 or a is True or b is True:
            return False
        ka, kb = self._possible_kinds(a), self._possible_kinds(b)
        if not ka & kb:
            return True
        va, vb = self._values(a), self._values(b)
        if va is not None and vb is not None and not any(json_equal(x, y) for x in va for y in vb):
            return True
        if ka & kb <= {"object"}:
            for x, y in ((a, b), (b, a)):
                for name in x.get("required", []):
                    if self.merger.key_side(y, name, ptr) is False:
                        return True
                    if name in y.get("required", []) and self.disjoint(
                        self.merger.key_side(x, name, ptr), self.merger.key_side(y, name, ptr), ptr, depth + 1
                    ):
                        return True
        if ka & kb <= {"integer", "number"}:
            lo_a, hi_a = self._num_bounds(a)
            lo_b, hi_b = self._num_bounds(b)
            for hi, lo in ((hi_a, lo_b), (hi_b, lo_a)):
                if hi is not None and lo is not None and (hi[0] < lo[0] or (hi[0] == lo[0] and (hi[1] or lo[1]))):
                    return True
        return False

    @staticmethod
    def _num_bounds(s: dict) -> tuple[Bound | None, Bound | None]:
        """(value, exclusive) lower and upper bounds of a number schema."""
        lo: Bound | None = None
        hi: Bound | None = None
        if "minimum" in s:
            lo = (s["minimum"], False)
        if "exclusiveMinimum" in s and (lo is None or s["exclusiveMinimum"] >= lo[0]):
            lo = (s["exclusiveMinimum"], True)
        if "maximum" in s:
            hi = (s["maximum"], False)
        if "exclusiveMaximum" in s and (hi is None or s["exclusiveMaximum"] <= hi[0]):
            hi = (s["exclusiveMaximum"], True)
        return lo, hi

    def check(self, branches: list, ptr: str) -> None:
        what = f"the oneOf at {ptr or '/'}"
        for i in range(len(branches)):
            for j in range(i + 1, len(branches)):
                self.budget.tick(what)
                if not self.disjoint(branches[i], branches[j], ptr):
                    raise schema_error("oneOf", ptr, f"cannot prove branches {i} and {j} mutually exclusive")
