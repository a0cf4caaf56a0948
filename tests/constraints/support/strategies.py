"""Hypothesis strategies for random schemas built from the keywords the engine supports."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

NAMES = ["id", "name", "tags", "value", "x", "é", "a b", "nested"]
PATTERNS = ["^[a-z]+$", "^[A-Z][a-z]{0,5}$", "\\d{3}-\\d{2}", "^(foo|bar)+$", '^[^"\\\\]{2,8}$', "^.{0,3}$"]
FORMATS = ["date", "time", "date-time", "uuid", "email", "ipv4", "uri"]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False).map(lambda f: round(f, 3)),
    st.text(max_size=6),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def string_schema(draw: st.DrawFn) -> dict[str, Any]:
    s: dict[str, Any] = {"type": "string"}
    kind = draw(st.sampled_from(["plain", "len", "pattern", "format"]))
    if kind == "len":
        lo = draw(st.integers(0, 4))
        s["minLength"] = lo
        if draw(st.booleans()):
            s["maxLength"] = lo + draw(st.integers(0, 6))
    elif kind == "pattern":
        s["pattern"] = draw(st.sampled_from(PATTERNS))
    elif kind == "format":
        s["format"] = draw(st.sampled_from(FORMATS))
    return s


@st.composite
def number_schema(draw: st.DrawFn) -> dict[str, Any]:
    s: dict[str, Any] = {"type": draw(st.sampled_from(["integer", "number"]))}
    lo = draw(st.none() | st.integers(-50, 50) | st.sampled_from([-2.5, 0.1, 1.1]))
    if lo is not None:
        s["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = lo
    if draw(st.booleans()):
        base = lo if lo is not None else 0
        s["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = base + draw(st.sampled_from([1, 2.5, 10, 1000]))
    return s


leaf_schemas = st.one_of(
    string_schema(),
    number_schema(),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(json_values, min_size=1, max_size=4).map(lambda vs: {"enum": vs}),
    json_values.map(lambda v: {"const": v}),
    st.just(True),
    st.lists(
        st.sampled_from(["string", "integer", "number", "boolean", "null"]), min_size=1, max_size=3, unique=True
    ).map(lambda ts: {"type": ts}),
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    @st.composite
    def obj(draw: st.DrawFn) -> dict[str, Any]:
        names = draw(st.lists(st.sampled_from(NAMES), max_size=4, unique=True))
        props = {n: draw(inner) for n in names}
        s: dict[str, Any] = {"type": "object", "properties": props}
        if names:
            s["required"] = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
        extra = draw(st.sampled_from(["absent", "false", "schema", "pattern"]))
        if extra == "false":
            s["additionalProperties"] = False
        elif extra == "schema":
            s["additionalProperties"] = draw(leaf_schemas)
        elif extra == "pattern":
            s["patternProperties"] = {"^p_": draw(leaf_schemas)}
            s["additionalProperties"] = False
        return s

    @st.composite
    def arr(draw: st.DrawFn) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "array"}
        if draw(st.booleans()):
            s["prefixItems"] = draw(st.lists(inner, min_size=1, max_size=2))
        s["items"] = draw(inner | st.just(False)) if "prefixItems" in s else draw(inner)
        lo = draw(st.integers(0, 2))
        if lo and (s["items"] is not False or lo <= len(s.get("prefixItems", []))):
            s["minItems"] = lo
        if draw(st.booleans()):
            s["maxItems"] = lo + draw(st.integers(0, 3))
        return s

    any_of = st.lists(inner, min_size=2, max_size=3).map(lambda bs: {"anyOf": bs})
    one_of = st.tuples(string_schema(), number_schema(), st.just({"type": "null"})).map(lambda t: {"oneOf": list(t)})
    all_of = st.tuples(obj(), obj()).map(lambda t: {"allOf": list(t)})
    return st.one_of(obj(), arr(), any_of, one_of, all_of)


schemas = st.recursive(leaf_schemas, _containers, max_leaves=8)


@st.composite
def schemas_with_refs(draw: st.DrawFn) -> Any:
    """A schema, sometimes routed through ``$defs``/``definitions`` and ``$ref``, sometimes
    recursive (a tree whose children are the root)."""
    body = draw(schemas)
    kind = draw(st.sampled_from(["plain", "ref", "recursive"]))
    if kind == "ref":
        key = draw(st.sampled_from(["$defs", "definitions"]))
        return {key: {"item": body}, "$ref": f"#/{key}/item"}
    if kind == "recursive":
        return {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "v": body,
                        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
                    },
                    "required": ["v"],
                    "additionalProperties": False,
                }
            },
            "$ref": "#/$defs/node",
        }
    return body
