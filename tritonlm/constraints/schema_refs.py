"""JSON Schema reference resolution and ``allOf`` merging.

``SchemaRefs`` resolves ``$ref`` (``#``-pointers and ``$anchor`` names of the root resource;
anything else raises). ``SchemaMerger.inline`` replaces a schema's top-level ``$ref`` and
``allOf`` by one merged schema (a dict, or a bool when the merge decides it), exactly or not
at all: keyword pairs it cannot intersect raise ``SchemaError``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from .budget import Budget
from .schema_base import ANNOTATIONS, MAX_DISTRIBUTE, PatternCache, json_equal, kinds_of_types, pointer, schema_error

_UNSATISFIABLE = object()  # a merged keyword no value can satisfy: the whole merge is False
_MAX_INLINE_DEPTH = 64
_VALUES = ("enum", "const", "examples", "default")  # keywords holding values, not subschemas


class SchemaRefs:
    """Anchors and JSON pointers of one root schema."""

    def __init__(self, root: Any, budget: Budget) -> None:
        self.root = root
        self.anchors: dict[str, str] = {}
        if isinstance(root, dict):
            self._collect_anchors(root, budget)

    def _collect_anchors(self, root: dict, budget: Budget) -> None:
        todo: list[tuple[Any, str]] = [(root, "")]
        while todo:
            schema, ptr = todo.pop()
            budget.tick("the anchors of the schema")
            if isinstance(schema, dict):
                if ptr and "$id" in schema:
                    raise schema_error("$id", ptr, "embedded schema resources are not supported")
                if isinstance(schema.get("$anchor"), str):
                    self.anchors[schema["$anchor"]] = ptr
                todo.extend(
                    (v, pointer(ptr, k))
                    for k, v in reversed(schema.items())
                    if k not in ("enum", "const", "examples", "default")
                )
            elif isinstance(schema, list):
                todo.extend((v, pointer(ptr, i)) for i, v in reversed(list(enumerate(schema))))

    def ref_pointer(self, ref: Any, ptr: str) -> str:
        if not isinstance(ref, str):
            raise schema_error("$ref", ptr, "must be a string")
        root_id = self.root.get("$id") if isinstance(self.root, dict) else None
        if isinstance(root_id, str) and ref.startswith(root_id.split("#")[0]) and root_id:
            ref = ref[len(root_id.split("#")[0]) :]
        if not ref.startswith("#"):
            raise schema_error("$ref", ptr, f"only references inside the schema are supported, got {ref!r}")
        frag = ref[1:]
        if frag and not frag.startswith("/"):
            if frag not in self.anchors:
                raise schema_error("$ref", ptr, f"unknown anchor {frag!r}")
            return self.anchors[frag]
        return unquote(frag)

    def resolve(self, pointer: str, ptr: str) -> Any:
        node = self.root
        if pointer:
            for part in pointer.split("/")[1:]:
                part = part.replace("~1", "/").replace("~0", "~")
                if isinstance(node, dict) and part in node:
                    node = node[part]
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                else:
                    raise schema_error("$ref", ptr, f"cannot resolve {pointer!r}")
        return node


class SchemaMerger:
    """Inlines ``$ref`` and merges ``allOf`` branches into one schema."""

    def __init__(self, refs: SchemaRefs, patterns: PatternCache, budget: Budget) -> None:
        self.refs = refs
        self.patterns = patterns
        self.budget = budget

    def inline(self, schema: Any, ptr: str, depth: int = 0) -> Any:
        """Replace a top-level ``$ref`` and ``allOf`` by their merged content (bool or dict)."""
        if depth > _MAX_INLINE_DEPTH:
            raise schema_error("$ref", ptr, "reference cycle without progress")
        if not isinstance(schema, dict):
            return schema
        if "$ref" in schema:
            target = self.refs.resolve(self.refs.ref_pointer(schema["$ref"], ptr), ptr)
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.merge(rest, self.inline(target, ptr, depth + 1), ptr, depth + 1)
        if "allOf" in schema:
            branches = schema["allOf"]
            if not isinstance(branches, list) or not branches:
                raise schema_error("allOf", ptr, "must be a non-empty array")
            out: Any = {k: v for k, v in schema.items() if k != "allOf"}
            for i, b in enumerate(branches):
                out = self.merge(out, self.inline(b, pointer(ptr, "allOf", i), depth + 1), ptr, depth + 1)
            return out
        return schema

    def merge(self, a: Any, b: Any, ptr: str, depth: int = 0) -> Any:
        self.budget.tick(f"the allOf at {ptr or '/'}", 1 + (len(a) if isinstance(a, dict) else 0))
        a = self.inline(a, ptr, depth)
        b = self.inline(b, ptr, depth)
        if a is False or b is False:
            return False
        if a is True:
            return b
        if b is True:
            return a
        if not isinstance(a, dict) or not isinstance(b, dict):
            raise schema_error("allOf", ptr, "subschemas must be objects or booleans")
        out = dict(a)
        handled = self._merge_containers(a, b, out, ptr)
        for k, v in b.items():
            if k in handled:
                continue
            if k not in out:
                out[k] = v
                continue
            w = out[k]
            if k in ANNOTATIONS or w is v:
                continue
            merged = self._merge_keyword(k, w, v, ptr)
            if merged is _UNSATISFIABLE:
                return False
            out[k] = merged
        if "enum" in out and "const" in out:
            keep = [x for x in out["enum"] if json_equal(x, out["const"])]
            if not keep:
                return False
            out.pop("enum")
        return out

    def _merge_containers(self, a: dict, b: dict, out: dict, ptr: str) -> set[str]:
        """Merge the object and array keywords that must be merged together; returns them."""
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
        return handled

    def _merge_keyword(self, k: str, w: Any, v: Any, ptr: str) -> Any:
        """The value of keyword ``k`` under both ``w`` and ``v`` (``_UNSATISFIABLE``: none)."""
        if k == "type":
            return _merge_types(w, v)
        if k == "properties":
            self.budget.charge(f"the allOf at {ptr or '/'}", len(v))
            props = dict(w)
            for name, s in v.items():
                props[name] = {"allOf": [props[name], s]} if name in props else s
            return props
        if k == "required":
            return list(dict.fromkeys([*w, *v]))
        if k in ("minimum", "minLength", "minItems", "exclusiveMinimum"):
            return max(w, v)
        if k in ("maximum", "maxLength", "maxItems", "exclusiveMaximum"):
            return min(w, v)
        if k in ("items", "additionalItems") and not isinstance(w, list) and not isinstance(v, list):
            return {"allOf": [w, v]}
        if k == "pattern":
            return [*(w if isinstance(w, list) else [w]), *(v if isinstance(v, list) else [v])]
        if k == "enum":
            return [x for x in v if any(json_equal(x, y) for y in w)]
        if k == "const":
            return v if json_equal(v, w) else _UNSATISFIABLE
        if k == "anyOf":
            pairs = [{"allOf": [x, y]} for x in w for y in v]
            if len(pairs) > MAX_DISTRIBUTE:
                raise schema_error("anyOf", ptr, "too many combinations to merge under allOf")
            return pairs
        if k in ("additionalProperties", "patternProperties", "prefixItems") or json_equal(w, v):
            return w  # the first two merged by _merge_objects, the last by _merge_arrays
        raise schema_error(k, ptr, "cannot merge two different values under allOf")

    def key_side(self, s: dict, name: str, ptr: str) -> Any:
        """The schema side ``s`` applies to property ``name``."""
        parts = []
        if name in s.get("properties", {}):
            parts.append(s["properties"][name])
        for pat, sub in s.get("patternProperties", {}).items():
            if self.patterns.matches(pat, name, ptr):
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
        self.budget.charge(f"the allOf at {ptr or '/'}", len(names))
        out["properties"] = {n: {"allOf": [self.key_side(a, n, ptr), self.key_side(b, n, ptr)]} for n in names}
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
        raise schema_error(
            "patternProperties", ptr, "cannot merge different patternProperties with additionalProperties"
        )

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


def _merge_types(w: str | list[str], v: str | list[str]) -> list[str]:
    ka = kinds_of_types([w] if isinstance(w, str) else list(w))
    kb = kinds_of_types([v] if isinstance(v, str) else list(v))
    both = ka & kb
    types: list[str] = [t for t in ("null", "boolean", "object", "array", "string") if t in both]
    if {"integer", "number"} <= both:
        types.append("number")
    elif "integer" in both:
        types.append("integer")
    return types
