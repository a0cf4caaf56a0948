"""Per-type compile of JSON Schema: strings, numbers, arrays and objects to grammar nodes.

``TypeCompiler`` compiles one plain schema (no ``$ref``/``allOf``/``anyOf``/``oneOf``/``not``
at its top level) for one JSON type; subschemas go back through the owning
``SchemaCompiler`` (``SubschemaCompiler``). String automata tokenizer-independent and worth
sharing (key literals, the any-string DFA, built-in formats) come from ``StringDfas``, over
the compiler's bounded DFA cache; small string automata get their token tables at compile
time rather than during decoding.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Protocol

from . import automata as am
from . import bytedfa as bd
from .budget import Budget
from .cache import LRUCache
from .grammar import GrammarCore
from .leaf_tables import LeafTables
from .nodes import ArrayNode, CountedStringNode, LeafNode, ObjectNode
from .numbers import NumberNode
from .object_keys import KeyProduct, ObjectKeys
from .schema_base import FORMATS, PatternCache, decimal, pointer, schema_error

_PRECOMPUTE_MAX_STATES = 32  # string automata up to this size get all their token tables at compile time
_MAX_ARRAY_BOUND = 10_000
_MAX_PATTERN_PROPERTIES = 4


class SubschemaCompiler(Protocol):
    def compile(self, schema: object, ptr: str) -> int: ...

    def compile_const(self, v: object, ptr: str) -> int: ...


class StringDfas:
    """Shared byte DFAs of one escapes policy, over a compiler's DFA cache (``shared``)."""

    def __init__(self, shared: LRUCache[tuple[str, ...], bd.ByteDFA], tables: LeafTables, escapes: str) -> None:
        self.shared = shared
        self.tables = tables
        self.escapes = escapes

    def literal_key(self, name: str, budget: Budget, construct: str) -> bd.ByteDFA:
        what = f"the key {name[:40]!r} of {construct}"
        return self.shared.get_or_build(
            ("keylit", name, self.escapes),
            lambda: bd.string_byte_dfa(
                am.literals_dfa([name], budget, what), escapes=self.escapes, budget=budget, construct=what
            ),
        )

    def any_key(self, budget: Budget) -> bd.ByteDFA:
        """The any-string DFA, its token tables computed (or loaded from disk)."""
        d = self.shared.get_or_build(("any", self.escapes), self._build_any)
        self.tables.precompute(d, budget)
        return d

    def _build_any(self) -> bd.ByteDFA:
        d = bd.string_byte_dfa(am.any_string_dfa(), escapes=self.escapes)
        d.persistent = True
        return d


class TypeCompiler:
    def __init__(
        self,
        owner: SubschemaCompiler,
        core: GrammarCore,
        dfas: StringDfas,
        patterns: PatternCache,
        lenient: bool,
        budget: Budget,
    ) -> None:
        self.owner = owner
        self.core = core
        self.dfas = dfas
        self.patterns = patterns
        self.lenient = lenient
        self.budget = budget
        self.string_leaves: dict[tuple[object, ...], int] = {}
        self.string_dfas: dict[tuple[object, ...], am.CharDFA] = {}
        self.key_products: dict[tuple[object, ...], KeyProduct] = {}
        self.bool_dfa: bd.ByteDFA | None = None

    def compile_type(self, t: str, s: dict, ptr: str) -> int:
        if t == "null":
            return self.owner.compile_const(None, ptr)
        if t == "boolean":
            if self.bool_dfa is None:
                self.bool_dfa = bd.bytes_dfa([b"true", b"false"])
            return self.core.node_alt(LeafNode(self.bool_dfa))
        if t == "string":
            return self.compile_string(s, ptr)
        if t in ("integer", "number"):
            return self.core.node_alt(self.number_node(t == "integer", s, ptr))
        if t == "object":
            return self.compile_object(s, ptr)
        return self.compile_array(s, ptr)

    def number_node(self, integer: bool, s: dict, ptr: str) -> NumberNode:
        def num(k: str) -> Fraction | None:
            if k not in s:
                return None
            v = s[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise schema_error(k, pointer(ptr, k), "must be a finite number")
            return decimal(v)

        lo, hi = num("minimum"), num("maximum")
        xlo, xhi = num("exclusiveMinimum"), num("exclusiveMaximum")
        lo_x = hi_x = False
        if xlo is not None and (lo is None or xlo >= lo):
            lo, lo_x = xlo, True
        if xhi is not None and (hi is None or xhi <= hi):
            hi, hi_x = xhi, True
        return NumberNode(integer, lo, lo_x, hi, hi_x)

    def string_char_dfa(self, s: dict, ptr: str) -> am.CharDFA:
        """The character DFA of a string schema with its patterns, format and length bounds
        (memoised per compile)."""
        key = _string_key(s)
        hit = self.string_dfas.get(key)
        if hit is not None:
            return hit
        lo, hi = _length_bounds(s, ptr)
        what = _string_construct(s, ptr)
        dfa = am.any_string_dfa()
        patterns = s.get("pattern", [])
        for p in patterns if isinstance(patterns, list) else [patterns]:
            dfa = am.intersect(dfa, self.patterns.dfa(p, pointer(ptr, "pattern")), self.budget, what)
        if "format" in s:
            fmt = s["format"]
            if fmt not in FORMATS:
                if not self.lenient:
                    raise schema_error("format", pointer(ptr, "format"), f"unsupported format {fmt!r}")
            else:
                fdfa = self.patterns.dfa(
                    FORMATS[fmt], pointer(ptr, "format"), f"the format at {pointer(ptr, 'format')}"
                )
                dfa = am.intersect(dfa, fdfa, self.budget, what)
        dfa = am.with_length(dfa, lo, hi, self.budget, what)
        self.string_dfas[key] = dfa
        return dfa

    def literal_string(self, v: str, ptr: str) -> int:
        key = ("literal", v)
        if key not in self.string_leaves:
            what = f"the string {v[:40]!r} at {ptr or '/'}"
            dfa = bd.string_byte_dfa(
                am.literals_dfa([v], self.budget, what), escapes=self.dfas.escapes, budget=self.budget, construct=what
            )
            self.string_leaves[key] = self.core.node_alt(LeafNode(dfa))
        return self.string_leaves[key]

    def compile_string(self, s: dict, ptr: str) -> int:
        key = _string_key(s)
        if key not in self.string_leaves and "pattern" not in s and "format" not in s:
            lo, hi = _length_bounds(s, ptr)
            self.string_leaves[key] = self.core.node_alt(CountedStringNode(self.dfas.any_key(self.budget), lo, hi))
        if key not in self.string_leaves:
            bdfa = self._string_dfa(s, ptr)
            if bdfa.persistent or bdfa.size <= _PRECOMPUTE_MAX_STATES:
                self.dfas.tables.precompute(bdfa, self.budget)  # at compile time, not during decoding
            self.string_leaves[key] = self.core.node_alt(LeafNode(bdfa))
        return self.string_leaves[key]

    def _string_dfa(self, s: dict, ptr: str) -> bd.ByteDFA:
        """The byte DFA of a string with a pattern or format (a built-in format alone: shared)."""
        fmt = s.get("format")
        only_format = set(s) & {"pattern", "format", "minLength", "maxLength"} == {"format"}
        shared_key = ("format", fmt, self.dfas.escapes) if only_format and fmt in FORMATS else None
        bdfa = self.dfas.shared.get(shared_key) if shared_key else None
        if bdfa is None:
            dfa = self.string_char_dfa(s, ptr)
            what = _string_construct(s, ptr)
            bdfa = bd.string_byte_dfa(dfa, escapes=self.dfas.escapes, budget=self.budget, construct=what)
            if shared_key:
                bdfa.persistent = True  # a built-in format: its tables are cached per tokenizer
                self.dfas.shared.put(shared_key, bdfa)
        return bdfa

    def compile_array(self, s: dict, ptr: str) -> int:
        if isinstance(s.get("items"), list):
            prefix, rest = s["items"], s.get("additionalItems", True)
            prefix_ptr, rest_ptr = "items", "additionalItems"
        else:
            if "additionalItems" in s:
                raise schema_error("additionalItems", ptr, "only meaningful with an array-valued 'items'")
            prefix, rest = s.get("prefixItems", []), s.get("items", True)
            prefix_ptr, rest_ptr = "prefixItems", "items"
        min_items = int(s.get("minItems", 0))
        max_items = s.get("maxItems")
        max_items = None if max_items is None else int(max_items)
        if s.get("uniqueItems") is True and (max_items is None or max_items > 1):
            raise schema_error(
                "uniqueItems", pointer(ptr, "uniqueItems"), "uniqueness cannot be expressed as a grammar"
            )
        if (max_items is not None and max_items > _MAX_ARRAY_BOUND) or max(len(prefix), min_items) > _MAX_ARRAY_BOUND:
            raise schema_error("maxItems", ptr, "array bounds too large")
        if not isinstance(prefix, list):
            raise schema_error(prefix_ptr, pointer(ptr, prefix_ptr), "must be an array")
        self.budget.charge(f"the {prefix_ptr} at {pointer(ptr, prefix_ptr)}", len(prefix))
        item_alts = [self.owner.compile(x, pointer(ptr, prefix_ptr, i)) for i, x in enumerate(prefix)]
        rest_alt = None if rest is False else self.owner.compile(rest, pointer(ptr, rest_ptr))
        return self.core.node_alt(ArrayNode(item_alts, rest_alt, min_items, max_items))

    def compile_object(self, s: dict, ptr: str) -> int:
        props = s.get("properties", {})
        required = s.get("required", [])
        patterns = s.get("patternProperties", {})
        additional = s.get("additionalProperties", True)
        if not isinstance(props, dict):
            raise schema_error("properties", pointer(ptr, "properties"), "must be an object")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise schema_error("required", pointer(ptr, "required"), "must be an array of strings")
        if not isinstance(patterns, dict):
            raise schema_error("patternProperties", pointer(ptr, "patternProperties"), "must be an object")
        named = list(dict.fromkeys([*props, *required]))
        what = f"the properties at {pointer(ptr, 'properties')}"
        self.budget.charge(what, len(named))
        position = {name: i for i, name in enumerate(named)}
        required_mask = sum(1 << position[r] for r in set(required))
        if len(patterns) > _MAX_PATTERN_PROPERTIES:
            raise schema_error("patternProperties", ptr, f"more than {_MAX_PATTERN_PROPERTIES} patterns")
        named_alts = [self._named_value(name, props, patterns, additional, ptr) for name in named]
        pattern_dfas = [(self.patterns.dfa(p, pointer(ptr, "patternProperties", p)), p) for p in patterns]
        combo_alts: dict[int, int] = {}
        pat_list = list(patterns.items())
        for mask in range(1, 1 << len(pat_list)):
            chosen = [pat_list[j][1] for j in range(len(pat_list)) if mask >> j & 1]
            sub = chosen[0] if len(chosen) == 1 else {"allOf": chosen}
            combo_alts[mask] = self.owner.compile(sub, pointer(ptr, "patternProperties"))
        additional_alt = (
            None if additional is False else self.owner.compile(additional, pointer(ptr, "additionalProperties"))
        )
        keys = ObjectKeys(
            self.core,
            self.dfas,
            named,
            required_mask,
            named_alts,
            pattern_dfas,
            combo_alts,
            additional_alt,
            budget=self.budget,
            construct=f"the object at {ptr or '/'}",
            products=self.key_products,
        )
        return self.core.node_alt(ObjectNode(keys))

    def _named_value(self, name: str, props: dict, patterns: dict, additional: object, ptr: str) -> int:
        """The value alternative of named key ``name``: its property schema and every pattern
        property it matches (or ``additionalProperties`` when neither applies)."""
        parts = [props[name]] if name in props else []
        pat_ptr = pointer(ptr, "patternProperties")
        parts += [sub for pat, sub in patterns.items() if self.patterns.matches(pat, name, pat_ptr)]
        if not parts:
            parts = [additional]
        sub = parts[0] if len(parts) == 1 else {"allOf": parts}
        return self.owner.compile(sub, pointer(ptr, "properties", name))

    def const_object(self, v: dict, ptr: str) -> int:
        """An object equal to ``v`` (keys in any order)."""
        self.budget.charge(f"the object value at {ptr or '/'}", len(v))
        named_alts = [self.owner.compile_const(x, ptr) for x in v.values()]
        keys = ObjectKeys(
            self.core,
            self.dfas,
            list(v),
            (1 << len(v)) - 1,
            named_alts,
            [],
            {},
            None,
            budget=self.budget,
            construct=f"the object value at {ptr or '/'}",
            products=self.key_products,
        )
        return self.core.node_alt(ObjectNode(keys))


def _string_key(s: dict) -> tuple[object, ...]:
    pats = s.get("pattern", [])
    return (
        "str",
        tuple(pats) if isinstance(pats, list) else (pats,),
        s.get("format"),
        s.get("minLength", 0),
        s.get("maxLength"),
    )


def _length_bounds(s: dict, ptr: str) -> tuple[int, int | None]:
    lo, hi = s.get("minLength", 0), s.get("maxLength")
    for k, v in (("minLength", lo), ("maxLength", hi)):
        integral = isinstance(v, int) or (isinstance(v, float) and v.is_integer())
        if v is not None and (isinstance(v, bool) or not integral or v < 0):
            raise schema_error(k, pointer(ptr, k), "must be a non-negative integer")
    return int(lo), None if hi is None else int(hi)


def _string_construct(s: dict, ptr: str) -> str:
    """Names a string schema in budget errors by the keywords that shape its automaton."""
    kws = [k for k in ("pattern", "format", "minLength", "maxLength") if k in s]
    if kws == ["pattern"]:
        return f"the pattern at {pointer(ptr, 'pattern')}"
    return f"the string at {ptr or '/'} ({', '.join(kws)})"
