"""JSON Schema (draft 2020-12, draft-7 spellings accepted) to grammar nodes.

Coverage: boolean schemas; ``type`` (string or list); ``enum``/``const``; ``$ref`` to
``#``-pointers, ``$defs``/``definitions`` and ``$anchor`` names of the root resource
(recursion allowed); ``allOf`` (merged into one schema); ``anyOf``; ``oneOf`` when its branches
are provably mutually exclusive; ``not`` with only ``type``; strings (``minLength``,
``maxLength``, ``pattern``, ``format`` in date, time, date-time, uuid, email, ipv4, uri);
integers/numbers with ``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum``;
objects (``properties``, ``required``, ``additionalProperties``, ``patternProperties``) with
keys in any order, each at most once; arrays (``prefixItems``, ``items``, draft-7 ``items``
arrays with ``additionalItems``, ``minItems``, ``maxItems``, ``uniqueItems`` when it cannot
bind).

Anything else that asserts something raises :class:`SchemaError` naming the keyword and its
JSON pointer. Annotations (title, description, examples, default, ...) assert nothing and
are accepted; keywords unknown to JSON Schema are errors unless ``lenient=True``.

``SchemaCompiler`` (here) checks keywords, expands ``anyOf``/``oneOf``/``not``, compiles
``enum``/``const`` and dispatches by type; ``schema_refs`` resolves ``$ref`` and merges
``allOf``, ``schema_oneof`` proves ``oneOf`` branches exclusive, ``schema_types`` compiles
each JSON type, ``object_keys`` builds the key automata of objects. The keyword tables live in
``schema_base`` (``ANNOTATIONS`` and ``SUPPORTED`` are re-exported here).
"""

from __future__ import annotations

import json
import math
from typing import Any

from tritonlm.errors import SchemaError

from . import bytedfa as bd
from .budget import MAX_NESTING, Budget, CompileBudget
from .bytedfa import ByteDFA
from .cache import LRUCache
from .grammar import GrammarCore
from .nodes import ArrayNode, Layout, LeafNode, RootNode
from .numbers import NumberNode
from .schema_base import (
    ANNOTATIONS,
    ARRAY_KW,
    KNOWN_UNSUPPORTED,
    OBJECT_KW,
    SUPPORTED,
    TYPES,
    PatternCache,
    char_dfa_accepts,
    decimal,
    json_equal,
    kinds_of_types,
    pointer,
    schema_error,
    value_kind,
)
from .schema_oneof import Exclusivity
from .schema_refs import SchemaMerger, SchemaRefs
from .schema_types import StringDfas, TypeCompiler

__all__ = ["ANNOTATIONS", "SUPPORTED", "SchemaCompiler"]


class SchemaCompiler:
    """Compiles the schemas of one root document into alternatives of ``core``.

    ``shared_dfas`` is the compiler's cache of tokenizer-independent byte DFAs. One instance
    per compile: it memoises ``$ref`` targets, string leaves and patterns of ``root``, and
    charges what it builds to ``budget``. Subschemas nest at most ``MAX_NESTING`` levels
    (``$ref`` chains included); ``pointer`` is where the compile is (for error messages).
    """

    def __init__(
        self,
        core: GrammarCore,
        root: Any,
        shared_dfas: LRUCache[tuple[str, ...], ByteDFA],
        *,
        lenient: bool = False,
        escapes: str = "canonical",
        budget: Budget | None = None,
    ) -> None:
        if escapes not in ("canonical", "any"):
            raise ValueError(f"escapes={escapes!r}: expected 'canonical' or 'any'")
        self.escapes = escapes
        self.core = core
        self.root = root
        self.lenient = lenient
        self.shared_dfas = shared_dfas
        self.budget = budget if budget is not None else CompileBudget.unlimited()
        self.depth = 0
        self.pointer = ""
        self.ref_alts: dict[str, int] = {}
        self.literal_dfas: dict[bytes, ByteDFA] = {}
        self.any_alt: int | None = None
        self.never_alt = core.new_alt()
        self.refs = SchemaRefs(root, self.budget)
        patterns = PatternCache(self.budget)
        self.merger = SchemaMerger(self.refs, patterns, self.budget)
        self.exclusivity = Exclusivity(self.merger, self.budget)
        dfas = StringDfas(shared_dfas, core.tables, escapes)
        self.types = TypeCompiler(self, core, dfas, patterns, lenient, self.budget)

    def compile_ref(self, ref: Any, ptr: str) -> int:
        target_ptr = self.refs.ref_pointer(ref, ptr)
        aid = self.ref_alts.get(target_ptr)
        if aid is None:
            aid = self.ref_alts[target_ptr] = self.core.new_alt()
            target = self.refs.resolve(target_ptr, ptr)
            inner = self.compile(target, target_ptr)
            self.core.alt_members[aid].append(("a", inner))
        return aid

    def check_keywords(self, schema: dict, ptr: str) -> None:
        for k in schema:
            if k in SUPPORTED or k in ANNOTATIONS:
                continue
            if k in KNOWN_UNSUPPORTED or not self.lenient:
                raise schema_error(k, ptr, "keyword not supported" if k in KNOWN_UNSUPPORTED else "unknown keyword")

    def compile(self, schema: Any, ptr: str) -> int:
        """Alternative id for the values ``schema`` accepts."""
        if self.depth >= MAX_NESTING:
            raise SchemaError(f"schema nested too deep at {ptr or '/'} (more than {MAX_NESTING} levels)")
        self.depth += 1
        outer, self.pointer = self.pointer, ptr
        try:
            self.budget.charge(f"the schema at {ptr or '/'}", 1)
            alt = self._compile(schema, ptr)
        finally:
            self.depth -= 1
        self.pointer = outer  # kept where it failed otherwise (reported on RecursionError)
        return alt

    def _compile(self, schema: Any, ptr: str) -> int:
        if schema is True:
            return self.any_value()
        if schema is False:
            return self.never_alt
        if not isinstance(schema, dict):
            raise schema_error("schema", ptr, "must be an object or a boolean")
        self.check_keywords(schema, ptr)
        if "$ref" in schema and all(k in ANNOTATIONS or k == "$ref" for k in schema):
            return self.compile_ref(schema["$ref"], pointer(ptr, "$ref"))
        s = self.merger.inline(schema, ptr)
        if not isinstance(s, dict):
            return self.compile(s, ptr)
        self.check_keywords(s, ptr)
        for comb in ("anyOf", "oneOf"):
            if comb in s:
                branches = s[comb]
                if not isinstance(branches, list) or not branches:
                    raise schema_error(comb, ptr, "must be a non-empty array")
                rest = {k: v for k, v in s.items() if k != comb}
                self.budget.charge(f"the {comb} at {pointer(ptr, comb)}", len(branches))
                plain = all(k in ANNOTATIONS for k in rest)
                merged = [b if plain else self.merger.merge(rest, b, ptr) for b in branches]
                if comb == "oneOf":
                    self.exclusivity.check([self.merger.inline(m, ptr) for m in merged], pointer(ptr, comb))
                return self.core.new_alt(("a", self.compile(m, pointer(ptr, comb, i))) for i, m in enumerate(merged))
        if "not" in s:
            s = self._apply_not(s, ptr)
            if s is False:
                return self.never_alt
        return self.compile_plain(s, ptr)

    def _apply_not(self, s: dict, ptr: str) -> Any:
        neg = self.merger.inline(s["not"], pointer(ptr, "not"))
        rest = {k: v for k, v in s.items() if k != "not"}
        if neg is True:
            return False
        if neg is False:
            return rest
        if not all(k == "type" or k in ANNOTATIONS for k in neg):
            raise schema_error("not", ptr, "only 'not' with just 'type' is supported")
        if "type" not in neg:
            return False
        excluded = kinds_of_types([neg["type"]] if isinstance(neg["type"], str) else neg["type"])
        kinds = {"null", "boolean", "object", "array", "string", "integer", "number"} - excluded
        if kinds == {"null", "boolean", "object", "array", "string", "number"}:
            raise schema_error("not", ptr, "non-integer numbers cannot be expressed as a type")
        types: list[str] = [t for t in ("null", "boolean", "object", "array", "string") if t in kinds]
        if {"integer", "number"} <= kinds:
            types.append("number")
        elif "integer" in kinds:
            types.append("integer")
        return self.merger.merge(rest, {"type": types}, ptr)

    def any_value(self) -> int:
        if self.any_alt is None:
            self.any_alt = self.core.new_alt()
            inner = self.compile_plain({}, "")
            self.core.alt_members[self.any_alt].append(("a", inner))
        return self.any_alt

    def compile_plain(self, s: dict, ptr: str) -> int:
        """A schema without $ref/allOf/anyOf/oneOf/not at its top level."""
        types = s.get("type")
        if types is None:
            kinds = list(TYPES)
        else:
            tl = [types] if isinstance(types, str) else types
            if not isinstance(tl, list) or any(t not in TYPES for t in tl):
                raise schema_error("type", pointer(ptr, "type"), f"unknown type in {types!r}")
            kinds = [t for t in TYPES if t in tl]
        if "number" in kinds and "integer" in kinds:
            kinds.remove("integer")
        if "enum" in s or "const" in s:
            return self.compile_values(s, kinds, ptr)
        members = []
        for t in kinds:
            members.append(("a", self.types.compile_type(t, s, ptr)))
        return self.core.new_alt(members)

    # -- enum / const --------------------------------------------------------------------
    def compile_values(self, s: dict, kinds: list[str], ptr: str) -> int:
        if "enum" in s:
            if not isinstance(s["enum"], list):
                raise schema_error("enum", pointer(ptr, "enum"), "must be an array")
            values = list(s["enum"])
        else:
            values = []
        if "const" in s:
            values = [s["const"]] if "enum" not in s else [v for v in values if json_equal(v, s["const"])]
        allowed = kinds_of_types(kinds)
        members = []
        vptr = pointer(ptr, "enum" if "enum" in s else "const")
        self.budget.charge(f"the values at {vptr}", len(values))
        for v in values:
            if value_kind(v) not in allowed:
                continue
            if not self._scalar_ok(v, s, ptr):
                continue
            members.append(("a", self.compile_const(v, vptr)))
        return self.core.new_alt(members)

    def _scalar_ok(self, v: Any, s: dict, ptr: str) -> bool:
        kind = value_kind(v)
        if kind in ("object", "array"):
            kws = OBJECT_KW if kind == "object" else ARRAY_KW
            if any(k in s for k in kws):
                return self._value_matches(v, s, ptr)
            return True
        if kind == "string":
            if "format" in s or "pattern" in s:
                return char_dfa_accepts(self.types.string_char_dfa(s, ptr), v)
            return s.get("minLength", 0) <= len(v) <= s.get("maxLength", len(v))
        if kind in ("integer", "number"):
            if not math.isfinite(v):
                return False
            f = decimal(v)
            return self.types.number_node(False, s, ptr).within_bounds(f)
        return True

    def _value_matches(self, v: Any, s: dict, ptr: str) -> bool:
        """Does ``v`` satisfy ``s`` apart from enum/const? Checked by matching its compact JSON
        text against a separately compiled grammar of the remaining keywords."""
        rest = {k: x for k, x in s.items() if k not in ("enum", "const")}
        sub_core = GrammarCore(self.core.info, Layout("compact"), self.core.tables)
        sub = SchemaCompiler(sub_core, self.root, self.shared_dfas, lenient=self.lenient, budget=self.budget)
        sub.depth = self.depth
        aid = sub.compile(rest, ptr)
        sub_core.finalize(self.budget)
        sid = sub_core.initial_state(sub_core.add_node(RootNode(aid)))
        sid = sub_core.step_bytes(sid, json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        return sid >= 0 and sub_core.can_end(sid)

    def compile_const(self, v: Any, ptr: str) -> int:
        self.budget.charge(f"the value at {ptr or '/'}", 1)
        kind = value_kind(v)
        if kind in ("null", "boolean"):
            text = b"null" if v is None else b"true" if v else b"false"
            dfa = self.literal_dfas.get(text)
            if dfa is None:
                dfa = self.literal_dfas[text] = bd.bytes_dfa([text])
            return self.core.node_alt(LeafNode(dfa))
        if kind in ("integer", "number"):
            if not math.isfinite(v):
                return self.never_alt
            f = decimal(v)
            return self.core.node_alt(NumberNode(False, f, False, f, False))
        if kind == "string":
            return self.types.literal_string(v, ptr)
        if kind == "array":
            items = [self.compile_const(x, ptr) for x in v]
            return self.core.node_alt(ArrayNode(items, None, len(v), len(v)))
        return self.types.const_object(v, ptr)
