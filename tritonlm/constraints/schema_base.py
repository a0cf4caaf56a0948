"""Shared pieces of the JSON Schema compiler: keyword tables, built-in formats, JSON-pointer
and error helpers, JSON value helpers, and the per-compile cache of pattern automata.

Every compile error is a ``SchemaError`` whose text names the keyword and the JSON pointer of
the schema it sits in (``schema_error``).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from tritonlm.errors import SchemaError

from .automata import CharDFA, determinize
from .budget import Budget
from .charclass import cc_contains
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


def pointer(base: str, *parts: Any) -> str:
    out = base
    for p in parts:
        out += "/" + str(p).replace("~", "~0").replace("/", "~1")
    return out


def schema_error(keyword: str, pointer: str, why: str) -> SchemaError:
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


def kinds_of_types(types: list[str]) -> set[str]:
    out = set()
    for t in types:
        if t == "number":
            out |= {"integer", "number"}
        else:
            out.add(t)
    return out


def decimal(v: int | float) -> Fraction:
    """The exact value of the number as written in JSON (floats by their shortest repr, so
    that a bound of 1.1 equals the instance text "1.1", as float comparison has it)."""
    return Fraction(v) if isinstance(v, int) else Fraction(repr(float(v)))


def char_dfa_accepts(dfa: CharDFA, text: str) -> bool:
    """Does the character DFA accept ``text``?"""
    q = dfa.start
    for ch in text:
        cp = ord(ch)
        for cls, t in dfa.trans[q]:
            if cc_contains(cls, cp):
                q = t
                break
        else:
            return False
    return dfa.accept[q] is not None


class PatternCache:
    """Character DFAs of the regex patterns of one compile, by pattern text (built under the
    compile's ``budget``)."""

    def __init__(self, budget: Budget) -> None:
        self._dfas: dict[str, CharDFA] = {}
        self.budget = budget

    def dfa(self, pattern: Any, ptr: str, construct: str = "") -> CharDFA:
        if not isinstance(pattern, str):
            raise schema_error("pattern", ptr, "must be a string")
        d = self._dfas.get(pattern)
        if d is None:
            what = construct or f"the pattern at {ptr or '/'}"
            nfa = regex_nfa(pattern, ptr, budget=self.budget, construct=what)
            d = self._dfas[pattern] = determinize(nfa, budget=self.budget, construct=what)
        return d

    def matches(self, pattern: str, text: str, ptr: str) -> bool:
        """Does ``pattern`` (search semantics) match ``text``?"""
        return char_dfa_accepts(self.dfa(pattern, ptr), text)
