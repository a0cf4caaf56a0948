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
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import Any

import numpy as np

from tritonlm.errors import SchemaError

from . import automata as am
from .grammar import GrammarCore
from .nodes import ArrayNode, CountedStringNode, KeyLeafNode, Layout, LeafNode, NumberNode, ObjectNode, RootNode
from .regex import regex_nfa

ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "examples",
        "default",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$schema",
        "$id",
        "$anchor",
        "$defs",
        "definitions",
        "$vocabulary",
        "contentMediaType",
        "contentEncoding",
        "contentSchema",
    }
)
SUPPORTED = frozenset(
    {
        "type",
        "enum",
        "const",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "$ref",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "items",
        "prefixItems",
        "additionalItems",
        "minItems",
        "maxItems",
        "uniqueItems",
    }
)
KNOWN_UNSUPPORTED = frozenset(
    {
        "multipleOf",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "unevaluatedProperties",
        "unevaluatedItems",
        "contains",
        "minContains",
        "maxContains",
        "if",
        "then",
        "else",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$recursiveAnchor",
    }
)
STRING_KW = ("minLength", "maxLength", "pattern", "format")
NUMBER_KW = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
OBJECT_KW = ("properties", "required", "additionalProperties", "patternProperties")
ARRAY_KW = ("items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems")
TYPES = ("null", "boolean", "object", "array", "string", "integer", "number")

FORMATS = {
    # years 0001-9999 (RFC 3339 allows 0000; Python's datetime, and so jsonschema's checker, does not)
    "date": r"^(?:[1-9]\d{3}|0[1-9]\d\d|00[1-9]\d|000[1-9])-"
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)"
    r"|02-(?:0[1-9]|1\d|2[0-8]))$",
    "time": r"^(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)$",
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "email": r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$",
    "ipv4": r"^(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$",
    "uri": r"^[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9\-._~:/?#@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*$",
}
FORMATS["date-time"] = FORMATS["date"][:-1] + "[Tt]" + FORMATS["time"][1:]

MAX_DISTRIBUTE = 64


def _ptr(base: str, *parts: Any) -> str:
    out = base
    for p in parts:
        out += "/" + str(p).replace("~", "~0").replace("/", "~1")
    return out


def _err(keyword: str, pointer: str, why: str) -> SchemaError:
    return SchemaError(f"{keyword!r} at {pointer or '/'}: {why}")


def json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON Schema defines it (1 == 1.0, True != 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def value_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "integer" if v.is_integer() else "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    raise TypeError(type(v))


def _kinds_of_types(types: list[str]) -> set[str]:
    out = set()
    for t in types:
        if t == "number":
            out |= {"integer", "number"}
        else:
            out.add(t)
    return out


class SchemaCompiler:
    def __init__(self, core: GrammarCore, root: Any, *, lenient: bool = False, escapes: str = "canonical") -> None:
        if escapes not in ("canonical", "any"):
            raise ValueError(f"escapes={escapes!r}: expected 'canonical' or 'any'")
        self.escapes = escapes
        self.core = core
        self.root = root
        self.lenient = lenient
        self.ref_alts: dict[str, int] = {}
        self.string_leaves: dict[tuple, int] = {}
        self.regex_dfas: dict[str, am.CharDFA] = {}
        self.any_alt: int | None = None
        self.never_alt = core.new_alt()
        self.anchors: dict[str, str] = {}
        if isinstance(root, dict):
            self._collect_anchors(root, "")

    # -- references ------------------------------------------------------------------------
    def _collect_anchors(self, schema: Any, ptr: str) -> None:
        if isinstance(schema, dict):
            if ptr and "$id" in schema:
                raise _err("$id", ptr, "embedded schema resources are not supported")
            if isinstance(schema.get("$anchor"), str):
                self.anchors[schema["$anchor"]] = ptr
            for k, v in schema.items():
                if k in ("enum", "const", "examples", "default"):
                    continue
                self._collect_anchors(v, _ptr(ptr, k))
        elif isinstance(schema, list):
            for i, v in enumerate(schema):
                self._collect_anchors(v, _ptr(ptr, i))

    def _ref_pointer(self, ref: Any, ptr: str) -> str:
        if not isinstance(ref, str):
            raise _err("$ref", ptr, "must be a string")
        root_id = self.root.get("$id") if isinstance(self.root, dict) else None
        if isinstance(root_id, str) and ref.startswith(root_id.split("#")[0]) and root_id:
            ref = ref[len(root_id.split("#")[0]) :]
        if not ref.startswith("#"):
            raise _err("$ref", ptr, f"only references inside the schema are supported, got {ref!r}")
        frag = ref[1:]
        if frag and not frag.startswith("/"):
            if frag not in self.anchors:
                raise _err("$ref", ptr, f"unknown anchor {frag!r}")
            return self.anchors[frag]
        from urllib.parse import unquote

        return unquote(frag)

    def _resolve(self, pointer: str, ptr: str) -> Any:
        node = self.root
        if pointer:
            for part in pointer.split("/")[1:]:
                part = part.replace("~1", "/").replace("~0", "~")
                if isinstance(node, dict) and part in node:
                    node = node[part]
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                else:
                    raise _err("$ref", ptr, f"cannot resolve {pointer!r}")
        return node

    def compile_ref(self, ref: Any, ptr: str) -> int:
        pointer = self._ref_pointer(ref, ptr)
        aid = self.ref_alts.get(pointer)
        if aid is None:
            aid = self.ref_alts[pointer] = self.core.new_alt()
            target = self._resolve(pointer, ptr)
            inner = self.compile(target, pointer)
            self.core.alt_members[aid].append(("a", inner))
        return aid

    def inline(self, schema: Any, ptr: str, depth: int = 0) -> Any:
        """Replace a top-level ``$ref`` and ``allOf`` by their merged content (bool or dict)."""
        if depth > 64:
            raise _err("$ref", ptr, "reference cycle without progress")
        if not isinstance(schema, dict):
            return schema
        if "$ref" in schema:
            target = self._resolve(self._ref_pointer(schema["$ref"], ptr), ptr)
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.merge(rest, self.inline(target, ptr, depth + 1), ptr, depth + 1)
        if "allOf" in schema:
            branches = schema["allOf"]
            if not isinstance(branches, list) or not branches:
                raise _err("allOf", ptr, "must be a non-empty array")
            out: Any = {k: v for k, v in schema.items() if k != "allOf"}
            for i, b in enumerate(branches):
                out = self.merge(out, self.inline(b, _ptr(ptr, "allOf", i), depth + 1), ptr, depth + 1)
            return out
        return schema

    # -- allOf merging ---------------------------------------------------------------------
    def merge(self, a: Any, b: Any, ptr: str, depth: int = 0) -> Any:
        a = self.inline(a, ptr, depth)
        b = self.inline(b, ptr, depth)
        if a is False or b is False:
            return False
        if a is True:
            return b
        if b is True:
            return a
        if not isinstance(a, dict) or not isinstance(b, dict):
            raise _err("allOf", ptr, "subschemas must be objects or booleans")
        out = dict(a)
        handled: set[str] = set()
        if any(k in a for k in ("additionalProperties", "patternProperties")) or any(
            k in b for k in ("additionalProperties", "patternProperties")
        ):
            self._merge_objects(a, b, out, ptr)
            handled |= {"properties", "additionalProperties", "patternProperties"}
        if (
            any(k in a for k in ("prefixItems", "additionalItems"))
            or any(k in b for k in ("prefixItems", "additionalItems"))
            or isinstance(a.get("items"), list)
            or isinstance(b.get("items"), list)
        ):
            self._merge_arrays(a, b, out, ptr)
            handled |= {"prefixItems", "items", "additionalItems"}
        for k, v in b.items():
            if k in handled:
                continue
            if k not in out:
                out[k] = v
                continue
            w = out[k]
            if k in ANNOTATIONS or w is v:
                continue
            if k == "type":
                ta = [w] if isinstance(w, str) else list(w)
                tb = [v] if isinstance(v, str) else list(v)
                ka, kb = _kinds_of_types(ta), _kinds_of_types(tb)
                both = ka & kb
                out[k] = [t for t in ("null", "boolean", "object", "array", "string") if t in both]
                if {"integer", "number"} <= both:
                    out[k].append("number")
                elif "integer" in both:
                    out[k].append("integer")
            elif k == "properties":
                props = dict(w)
                for name, s in v.items():
                    props[name] = {"allOf": [props[name], s]} if name in props else s
                out[k] = props
            elif k == "required":
                out[k] = list(dict.fromkeys([*w, *v]))
            elif k in ("minimum", "minLength", "minItems", "exclusiveMinimum"):
                out[k] = max(w, v)
            elif k in ("maximum", "maxLength", "maxItems", "exclusiveMaximum"):
                out[k] = min(w, v)
            elif k in ("items", "additionalItems") and not isinstance(w, list) and not isinstance(v, list):
                out[k] = {"allOf": [w, v]}
            elif k == "pattern":
                out[k] = [*(w if isinstance(w, list) else [w]), *(v if isinstance(v, list) else [v])]
            elif k in ("enum", "const"):
                wa = w if k == "enum" else [w]
                out[k] = [x for x in (v if k == "enum" else [v]) if any(json_equal(x, y) for y in wa)]
                if k == "const":
                    if not out[k]:
                        return False
                    out[k] = out[k][0]
            elif k == "anyOf":
                pairs = [{"allOf": [x, y]} for x in w for y in v]
                if len(pairs) > MAX_DISTRIBUTE:
                    raise _err("anyOf", ptr, "too many combinations to merge under allOf")
                out[k] = pairs
            elif k in ("additionalProperties", "patternProperties", "prefixItems"):
                pass  # handled by _merge_objects / _merge_arrays
            elif json_equal(w, v):
                continue
            else:
                raise _err(k, ptr, "cannot merge two different values under allOf")
        if "enum" in out and "const" in out:
            keep = [x for x in out["enum"] if json_equal(x, out["const"])]
            if not keep:
                return False
            out.pop("enum")
        return out

    def _key_side(self, s: dict, name: str, ptr: str) -> Any:
        """The schema side ``s`` applies to property ``name``."""
        parts = []
        if name in s.get("properties", {}):
            parts.append(s["properties"][name])
        for pat, sub in s.get("patternProperties", {}).items():
            if self._regex_matches(pat, name, ptr):
                parts.append(sub)
        if not parts:
            return s.get("additionalProperties", True)
        return parts[0] if len(parts) == 1 else {"allOf": parts}

    def _merge_objects(self, a: dict, b: dict, out: dict, ptr: str) -> None:
        """Merge the object keywords of two allOf branches exactly, or raise.

        Named keys get both sides' schemas. Other keys: exact when one side forbids them
        outright, when neither side has an additionalProperties restriction (pattern sets are
        then unioned), or when both sides have the same patterns."""
        names = list(dict.fromkeys([*a.get("properties", {}), *b.get("properties", {})]))
        out["properties"] = {n: {"allOf": [self._key_side(a, n, ptr), self._key_side(b, n, ptr)]} for n in names}
        pa, pb = a.get("patternProperties", {}), b.get("patternProperties", {})
        add_a, add_b = a.get("additionalProperties", True), b.get("additionalProperties", True)
        out.pop("patternProperties", None)
        if (add_a is False and not pa) or (add_b is False and not pb):
            out["additionalProperties"] = False
            return
        if not pa and not pb:
            out["additionalProperties"] = {"allOf": [add_a, add_b]}
            return
        for (p1, add1), (p2, add2) in (((pa, add_a), (pb, add_b)), ((pb, add_b), (pa, add_a))):
            if not p1 and add1 is True:  # one side says nothing about other keys
                out["patternProperties"] = p2
                out["additionalProperties"] = add2
                return
            if not p1 and add2 is False:  # other keys must match a pattern of side 2, then obey add1
                out["patternProperties"] = {p: {"allOf": [sub, add1]} for p, sub in p2.items()}
                out["additionalProperties"] = False
                return
        if (add_a is True and add_b is True) or set(pa) == set(pb):
            merged = dict(pa)
            for pat, sub in pb.items():
                merged[pat] = {"allOf": [merged[pat], sub]} if pat in merged else sub
            out["patternProperties"] = merged
            out["additionalProperties"] = {"allOf": [add_a, add_b]}
            return
        raise _err("patternProperties", ptr, "cannot merge different patternProperties with additionalProperties")

    def _array_parts(self, s: dict) -> tuple[list, Any]:
        if isinstance(s.get("items"), list):
            return list(s["items"]), s.get("additionalItems", True)
        return list(s.get("prefixItems", [])), s.get("items", True)

    def _merge_arrays(self, a: dict, b: dict, out: dict, ptr: str) -> None:
        pa, ra = self._array_parts(a)
        pb, rb = self._array_parts(b)
        n = max(len(pa), len(pb))
        out["prefixItems"] = [{"allOf": [pa[i] if i < len(pa) else ra, pb[i] if i < len(pb) else rb]} for i in range(n)]
        out["items"] = {"allOf": [ra, rb]}
        out.pop("additionalItems", None)

    def _regex_matches(self, pattern: str, text: str, ptr: str) -> bool:
        dfa = self._regex_dfa(pattern, ptr)
        q = dfa.start
        for ch in text:
            cp = ord(ch)
            for cls, t in dfa.trans[q]:
                if am.cc_contains(cls, cp):
                    q = t
                    break
            else:
                return False
        return dfa.accept[q] is not None

    def _regex_dfa(self, pattern: Any, ptr: str) -> am.CharDFA:
        if not isinstance(pattern, str):
            raise _err("pattern", ptr, "must be a string")
        d = self.regex_dfas.get(pattern)
        if d is None:
            d = self.regex_dfas[pattern] = am.determinize(regex_nfa(pattern, ptr))
        return d

    # -- compile ----------------------------------------------------------------------------
    def check_keywords(self, schema: dict, ptr: str) -> None:
        for k in schema:
            if k in SUPPORTED or k in ANNOTATIONS:
                continue
            if k in KNOWN_UNSUPPORTED or not self.lenient:
                raise _err(k, ptr, "keyword not supported" if k in KNOWN_UNSUPPORTED else "unknown keyword")

    def compile(self, schema: Any, ptr: str) -> int:
        """Alternative id for the values ``schema`` accepts."""
        if schema is True:
            return self.any_value()
        if schema is False:
            return self.never_alt
        if not isinstance(schema, dict):
            raise _err("schema", ptr, "must be an object or a boolean")
        self.check_keywords(schema, ptr)
        if "$ref" in schema and all(k in ANNOTATIONS or k == "$ref" for k in schema):
            return self.compile_ref(schema["$ref"], _ptr(ptr, "$ref"))
        s = self.inline(schema, ptr)
        if not isinstance(s, dict):
            return self.compile(s, ptr)
        self.check_keywords(s, ptr)
        for comb in ("anyOf", "oneOf"):
            if comb in s:
                branches = s[comb]
                if not isinstance(branches, list) or not branches:
                    raise _err(comb, ptr, "must be a non-empty array")
                rest = {k: v for k, v in s.items() if k != comb}
                plain = all(k in ANNOTATIONS for k in rest)
                merged = [b if plain else self.merge(rest, b, ptr) for b in branches]
                if comb == "oneOf":
                    self._check_exclusive([self.inline(m, ptr) for m in merged], _ptr(ptr, comb))
                return self.core.new_alt(("a", self.compile(m, _ptr(ptr, comb, i))) for i, m in enumerate(merged))
        if "not" in s:
            s = self._apply_not(s, ptr)
            if s is False:
                return self.never_alt
        return self.compile_plain(s, ptr)

    def _apply_not(self, s: dict, ptr: str) -> Any:
        neg = self.inline(s["not"], _ptr(ptr, "not"))
        rest = {k: v for k, v in s.items() if k != "not"}
        if neg is True:
            return False
        if neg is False:
            return rest
        if not all(k == "type" or k in ANNOTATIONS for k in neg):
            raise _err("not", ptr, "only 'not' with just 'type' is supported")
        if "type" not in neg:
            return False
        excluded = _kinds_of_types([neg["type"]] if isinstance(neg["type"], str) else neg["type"])
        kinds = {"null", "boolean", "object", "array", "string", "integer", "number"} - excluded
        if kinds == {"null", "boolean", "object", "array", "string", "number"}:
            raise _err("not", ptr, "non-integer numbers cannot be expressed as a type")
        types = [t for t in ("null", "boolean", "object", "array", "string") if t in kinds]
        if {"integer", "number"} <= kinds:
            types.append("number")
        elif "integer" in kinds:
            types.append("integer")
        return self.merge(rest, {"type": types}, ptr)

    def _possible_kinds(self, s: Any) -> set[str]:
        if s is False:
            return set()
        if s is True or not isinstance(s, dict):
            return set(TYPES)
        kinds = set(TYPES)
        if "type" in s:
            kinds &= _kinds_of_types([s["type"]] if isinstance(s["type"], str) else s["type"])
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

    def _disjoint(self, a: Any, b: Any, ptr: str, depth: int = 0) -> bool:
        a = self.inline(a, ptr)
        b = self.inline(b, ptr)
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
                    if self._key_side(y, name, ptr) is False:
                        return True
                    if name in y.get("required", []) and self._disjoint(
                        self._key_side(x, name, ptr), self._key_side(y, name, ptr), ptr, depth + 1
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
    def _num_bounds(s: dict) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None]:
        """(value, exclusive) lower and upper bounds of a number schema."""
        lo = hi = None
        if "minimum" in s:
            lo = (s["minimum"], False)
        if "exclusiveMinimum" in s and (lo is None or s["exclusiveMinimum"] >= lo[0]):
            lo = (s["exclusiveMinimum"], True)
        if "maximum" in s:
            hi = (s["maximum"], False)
        if "exclusiveMaximum" in s and (hi is None or s["exclusiveMaximum"] <= hi[0]):
            hi = (s["exclusiveMaximum"], True)
        return lo, hi

    def _check_exclusive(self, branches: list, ptr: str) -> None:
        for i in range(len(branches)):
            for j in range(i + 1, len(branches)):
                if not self._disjoint(branches[i], branches[j], ptr):
                    raise _err("oneOf", ptr, f"cannot prove branches {i} and {j} mutually exclusive")

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
                raise _err("type", _ptr(ptr, "type"), f"unknown type in {types!r}")
            kinds = [t for t in TYPES if t in tl]
        if "number" in kinds and "integer" in kinds:
            kinds.remove("integer")
        if "enum" in s or "const" in s:
            return self.compile_values(s, kinds, ptr)
        members = []
        for t in kinds:
            members.append(("a", self.compile_type(t, s, ptr)))
        return self.core.new_alt(members)

    # -- enum / const --------------------------------------------------------------------
    def compile_values(self, s: dict, kinds: list[str], ptr: str) -> int:
        if "enum" in s:
            if not isinstance(s["enum"], list):
                raise _err("enum", _ptr(ptr, "enum"), "must be an array")
            values = list(s["enum"])
        else:
            values = []
        if "const" in s:
            values = [s["const"]] if "enum" not in s else [v for v in values if json_equal(v, s["const"])]
        allowed = _kinds_of_types(kinds)
        members = []
        for v in values:
            if value_kind(v) not in allowed:
                continue
            if not self._scalar_ok(v, s, ptr):
                continue
            members.append(("a", self.compile_const(v, ptr)))
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
                dfa = self.string_char_dfa(s, ptr)
                q = dfa.start
                for ch in v:
                    for cls, t in dfa.trans[q]:
                        if am.cc_contains(cls, ord(ch)):
                            q = t
                            break
                    else:
                        return False
                return dfa.accept[q] is not None
            return s.get("minLength", 0) <= len(v) <= s.get("maxLength", len(v))
        if kind in ("integer", "number"):
            if not math.isfinite(v):
                return False
            f = _decimal(v)
            return self.number_node(False, s, ptr)._intersects(f, True, f, True)
        return True

    def _value_matches(self, v: Any, s: dict, ptr: str) -> bool:
        """Does ``v`` satisfy ``s`` apart from enum/const? Checked by matching its compact JSON
        text against a separately compiled grammar of the remaining keywords."""
        rest = {k: x for k, x in s.items() if k not in ("enum", "const")}
        sub_core = GrammarCore(self.core.info, Layout("compact"))
        aid = SchemaCompiler(sub_core, self.root, lenient=self.lenient).compile(rest, ptr)
        sub_core.finalize()
        sid = sub_core.initial_state(sub_core.add_node(RootNode(aid)))
        sid = sub_core.step_bytes(sid, json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        return sid >= 0 and sub_core.can_end(sid)

    def compile_const(self, v: Any, ptr: str) -> int:
        kind = value_kind(v)
        if kind == "null":
            return self.core.node_alt(LeafNode(am.bytes_dfa([b"null"])))
        if kind == "boolean":
            return self.core.node_alt(LeafNode(am.bytes_dfa([b"true" if v else b"false"])))
        if kind in ("integer", "number"):
            if not math.isfinite(v):
                return self.never_alt
            f = _decimal(v)
            return self.core.node_alt(NumberNode(False, f, False, f, False))
        if kind == "string":
            key = ("literal", v)
            if key not in self.string_leaves:
                dfa = am.string_byte_dfa(am.literals_dfa([v]), escapes=self.escapes)
                self.string_leaves[key] = self.core.node_alt(LeafNode(dfa))
            return self.string_leaves[key]
        if kind == "array":
            items = [self.compile_const(x, ptr) for x in v]
            return self.core.node_alt(ArrayNode(items, None, len(v), len(v)))
        node = ObjectNode(list(v), (1 << len(v)) - 1)
        node.named_alts = [self.compile_const(x, ptr) for x in v.values()]
        node.patterns = []
        node.pattern_combo_alts = {}
        node.additional_alt = None
        self._attach_key_leaves(node)
        return self.core.node_alt(node)

    # -- types ---------------------------------------------------------------------------
    def compile_type(self, t: str, s: dict, ptr: str) -> int:
        if t == "null":
            return self.compile_const(None, ptr)
        if t == "boolean":
            return self.core.node_alt(LeafNode(am.bytes_dfa([b"true", b"false"])))
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
                raise _err(k, _ptr(ptr, k), "must be a finite number")
            return _decimal(v)

        lo, hi = num("minimum"), num("maximum")
        xlo, xhi = num("exclusiveMinimum"), num("exclusiveMaximum")
        lo_x = hi_x = False
        if xlo is not None and (lo is None or xlo >= lo):
            lo, lo_x = xlo, True
        if xhi is not None and (hi is None or xhi <= hi):
            hi, hi_x = xhi, True
        return NumberNode(integer, lo, lo_x, hi, hi_x)

    def string_char_dfa(self, s: dict, ptr: str) -> am.CharDFA:
        dfa = am.any_string_dfa()
        patterns = s.get("pattern", [])
        for p in patterns if isinstance(patterns, list) else [patterns]:
            dfa = am.intersect(dfa, self._regex_dfa(p, _ptr(ptr, "pattern")))
        if "format" in s:
            fmt = s["format"]
            if fmt not in FORMATS:
                if not self.lenient:
                    raise _err("format", _ptr(ptr, "format"), f"unsupported format {fmt!r}")
            else:
                dfa = am.intersect(dfa, self._regex_dfa(FORMATS[fmt], _ptr(ptr, "format")))
        lo, hi = s.get("minLength", 0), s.get("maxLength")
        for k, v in (("minLength", lo), ("maxLength", hi)):
            integral = isinstance(v, int) or (isinstance(v, float) and v.is_integer())
            if v is not None and (isinstance(v, bool) or not integral or v < 0):
                raise _err(k, _ptr(ptr, k), "must be a non-negative integer")
        return am.with_length(dfa, int(lo), None if hi is None else int(hi))

    def compile_string(self, s: dict, ptr: str) -> int:
        pats = s.get("pattern", [])
        key = (
            "str",
            tuple(pats) if isinstance(pats, list) else (pats,),
            s.get("format"),
            s.get("minLength", 0),
            s.get("maxLength"),
        )
        if key not in self.string_leaves and "pattern" not in s and "format" not in s:
            self.string_char_dfa(s, ptr)  # validates the length keywords
            hi = s.get("maxLength")
            self.string_leaves[key] = self.core.node_alt(
                CountedStringNode(self._any_key_dfa(), int(s.get("minLength", 0)), None if hi is None else int(hi))
            )
        if key not in self.string_leaves:
            shared_key = (
                ("format", s.get("format"), self.escapes)
                if set(s) & {"pattern", "format", "minLength", "maxLength"} == {"format"} and s.get("format") in FORMATS
                else None
            )
            bdfa = _SHARED_DFAS.get(shared_key) if shared_key else None
            if bdfa is None:
                dfa = self.string_char_dfa(s, ptr)
                if sum(len(r) for r in dfa.trans) > 200_000:
                    raise _err("maxLength", ptr, "string automaton too large")
                bdfa = am.string_byte_dfa(dfa, escapes=self.escapes)
                if shared_key:
                    bdfa.persistent = True  # a built-in format: its tables are cached per tokenizer
                    _SHARED_DFAS[shared_key] = bdfa
            if bdfa.persistent or bdfa.size <= _PRECOMPUTE_MAX_STATES:
                self.core.precompute(bdfa)  # at compile time, not during decoding
            self.string_leaves[key] = self.core.node_alt(LeafNode(bdfa))
        return self.string_leaves[key]

    def compile_array(self, s: dict, ptr: str) -> int:
        if isinstance(s.get("items"), list):
            prefix, rest = s["items"], s.get("additionalItems", True)
            prefix_ptr, rest_ptr = "items", "additionalItems"
        else:
            if "additionalItems" in s:
                raise _err("additionalItems", ptr, "only meaningful with an array-valued 'items'")
            prefix, rest = s.get("prefixItems", []), s.get("items", True)
            prefix_ptr, rest_ptr = "prefixItems", "items"
        min_items = int(s.get("minItems", 0))
        max_items = s.get("maxItems")
        max_items = None if max_items is None else int(max_items)
        if s.get("uniqueItems") is True and (max_items is None or max_items > 1):
            raise _err("uniqueItems", _ptr(ptr, "uniqueItems"), "uniqueness cannot be expressed as a grammar")
        if (max_items is not None and max_items > 10_000) or max(len(prefix), min_items) > 10_000:
            raise _err("maxItems", ptr, "array bounds too large")
        item_alts = [self.compile(x, _ptr(ptr, prefix_ptr, i)) for i, x in enumerate(prefix)]
        rest_alt = None if rest is False else self.compile(rest, _ptr(ptr, rest_ptr))
        return self.core.node_alt(ArrayNode(item_alts, rest_alt, min_items, max_items))

    def compile_object(self, s: dict, ptr: str) -> int:
        props = s.get("properties", {})
        required = s.get("required", [])
        patterns = s.get("patternProperties", {})
        additional = s.get("additionalProperties", True)
        if not isinstance(props, dict):
            raise _err("properties", _ptr(ptr, "properties"), "must be an object")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise _err("required", _ptr(ptr, "required"), "must be an array of strings")
        named = list(dict.fromkeys([*props, *required]))
        node = ObjectNode(named, sum(1 << named.index(r) for r in set(required)))
        node.named_alts = []
        for name in named:
            parts = [props[name]] if name in props else []
            pat_ptr = _ptr(ptr, "patternProperties")
            parts += [sub for pat, sub in patterns.items() if self._regex_matches(pat, name, pat_ptr)]
            if not parts:
                parts = [additional]
            sub = parts[0] if len(parts) == 1 else {"allOf": parts}
            node.named_alts.append(self.compile(sub, _ptr(ptr, "properties", name)))
        node.patterns = [(self._regex_dfa(p, _ptr(ptr, "patternProperties", p)), p) for p in patterns]
        if len(node.patterns) > 4:
            raise _err("patternProperties", ptr, "more than 4 patterns")
        node.pattern_combo_alts = {}
        pat_list = list(patterns.items())
        for mask in range(1, 1 << len(pat_list)):
            chosen = [pat_list[j][1] for j in range(len(pat_list)) if mask >> j & 1]
            sub = chosen[0] if len(chosen) == 1 else {"allOf": chosen}
            node.pattern_combo_alts[mask] = self.compile(sub, _ptr(ptr, "patternProperties"))
        node.additional_alt = (
            None if additional is False else self.compile(additional, _ptr(ptr, "additionalProperties"))
        )
        self._attach_key_leaves(node)
        return self.core.node_alt(node)

    def _attach_key_leaves(self, node: ObjectNode) -> None:
        """Give ``node`` a lazily built, per-seen-set key leaf (see ``KeyLeafNode``)."""
        core = self.core
        escapes = self.escapes
        cache: dict[int, tuple[int | None, list[tuple[int, int]]]] = {}
        shared: dict[str, Any] = {}

        def build_product() -> None:
            comps: list[am.ByteDFA] = []
            tags: list[tuple] = []
            for i, name in enumerate(node.named):
                comps.append(self._literal_key_dfa(name))
                tags.append(("lit", i))
            for j, (pdfa, _) in enumerate(node.patterns):
                comps.append(am.string_byte_dfa(pdfa, escapes=escapes))
                tags.append(("p", j))
            if node.additional_alt is not None or node.patterns:
                comps.append(self._any_key_dfa())
                tags.append(("any",))
            table, comp_states = am.product_table(comps)
            accepting = np.stack(
                [
                    np.where(comp_states[:, c] >= 0, np.asarray([*comps[c].labels, -1])[comp_states[:, c]], -1) >= 0
                    for c in range(len(comps))
                ],
                axis=1,
            )
            shared.update(comps=comps, tags=tags, table=table, comp_states=comp_states, accepting=accepting)

        def key_leaf_for_seen(seen: int) -> tuple[int | None, list[tuple[int, int]]]:
            hit = cache.get(seen)
            if hit is not None:
                return hit
            if not node.named and node.additional_alt is None and not node.patterns:
                cache[seen] = (None, [])
                return cache[seen]
            if not shared:
                build_product()
            comps, tags = shared["comps"], shared["tags"]
            outcomes: list[tuple[int, int]] = []
            label_of: dict[tuple[int, int], int] = {}

            def usable(i: int) -> bool:
                return not (seen >> i & 1) and core.alt_nonempty(node.named_alts[i])

            def combine(tagset: frozenset) -> int:
                lits = [t[1] for t in tagset if t[0] == "lit"]
                if lits:
                    if not usable(lits[0]):
                        return -1
                    outcome = (lits[0], node.named_alts[lits[0]])
                else:
                    pats = sum(1 << t[1] for t in tagset if t[0] == "p")
                    if pats:
                        alt = node.pattern_combo_alts[pats]
                    elif ("any",) in tagset and node.additional_alt is not None:
                        alt = node.additional_alt
                    else:
                        return -1
                    if not core.alt_nonempty(alt):
                        return -1
                    outcome = (-1, alt)
                if outcome not in label_of:
                    label_of[outcome] = len(outcomes)
                    outcomes.append(outcome)
                return label_of[outcome]

            accepting = shared["accepting"]
            labels = np.array(
                [
                    combine(frozenset(tags[c] for c in np.nonzero(row)[0].tolist())) if row.any() else -1
                    for row in accepting
                ],
                dtype=np.int32,
            )
            dfa = am.relabel(shared["table"], labels)
            if not outcomes or dfa.labels == [-1] * dfa.size or not (dfa.table[dfa.start] >= 0).any():
                cache[seen] = (None, outcomes)
                return cache[seen]
            useful = []
            for t in tags:
                if t[0] == "lit":
                    useful.append(usable(t[1]))
                elif t[0] == "any":
                    useful.append(node.additional_alt is not None and core.alt_nonempty(node.additional_alt))
                else:
                    useful.append(True)
            leaf = KeyLeafNode(dfa, shared["comp_states"], comps, tags, useful, combine, not node.patterns)
            result = (core.add_late_alt(leaf), outcomes)
            cache[seen] = result
            return result

        node.key_leaf_for_seen = key_leaf_for_seen
        if node.named or node.additional_alt is not None or node.patterns:
            build_product()

    def _literal_key_dfa(self, name: str) -> am.ByteDFA:
        key = ("keylit", name, self.escapes)
        d = _SHARED_DFAS.get(key)
        if d is None:
            d = _SHARED_DFAS[key] = am.string_byte_dfa(am.literals_dfa([name]), escapes=self.escapes)
        return d

    def _any_key_dfa(self) -> am.ByteDFA:
        key = ("any", self.escapes)
        d = _SHARED_DFAS.get(key)
        if d is None:
            d = _SHARED_DFAS[key] = am.string_byte_dfa(am.any_string_dfa(), escapes=self.escapes)
            d.persistent = True
        self.core.precompute(d)
        return d


_SHARED_DFAS: dict[tuple, am.ByteDFA] = {}
_PRECOMPUTE_MAX_STATES = 32  # string automata up to this size get all their token tables at compile time


def _decimal(v: int | float) -> Fraction:
    """The exact value of the number as written in JSON (floats by their shortest repr, so
    that a bound of 1.1 equals the instance text "1.1", as float comparison has it)."""
    return Fraction(v) if isinstance(v, int) else Fraction(repr(float(v)))


def _add_dfa(nfa: am.CharNFA, dfa: am.CharDFA, tag: Any) -> None:
    base = [nfa.new_state() for _ in range(dfa.size)]
    nfa.eps[nfa.start].append(base[dfa.start])
    for q in range(dfa.size):
        for cls, t in dfa.trans[q]:
            nfa.edges[base[q]].append((cls, base[t]))
        if dfa.accept[q] is not None:
            nfa.accept[base[q]] = tag
