"""JSON out of model text, and validation of a value against a JSON schema.

``extract_json_object`` finds the object a model meant: the contents of a fenced code block
(```json ... ``` first, then any fence), else the first balanced ``{...}`` in the text that
parses. ``schema_problems`` checks the JSON-schema keywords structured generation uses
(types, properties / required / additionalProperties, items and array bounds, enum / const,
string and number bounds, pattern, anyOf / oneOf / allOf / not, local ``$ref``); keywords it
does not know are ignored, as a validator must for unknown keywords.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from tritonlm.providers.errors import StructuredOutputError

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n(.*?)```", re.DOTALL)


def _balanced_objects(text: str) -> list[str]:
    """Every top-level balanced ``{...}`` span in ``text``, left to right (strings respected)."""
    spans: list[str] = []
    depth = 0
    start = -1
    in_string = False
    escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and depth > 0:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def _first_object(text: str) -> dict[str, Any] | None:
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            pass
        else:
            if isinstance(value, dict):
                return value
    for span in _balanced_objects(text):
        try:
            value = json.loads(span)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    # an unclosed or broken brace hides what follows from the balanced scan: decode at each "{"
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pass
        else:
            if isinstance(value, dict):
                return value
        start = text.find("{", start + 1)
    return None


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in model text, or None. Fenced blocks win over bare text; json-tagged
    fences win over other fences."""
    fences = _FENCE.findall(text)
    ordered = [body for tag, body in fences if tag.lower() == "json"] + [
        body for tag, body in fences if tag.lower() != "json"
    ]
    for body in ordered:
        value = _first_object(body)
        if value is not None:
            return value
    return _first_object(text)


# ---- validation ---------------------------------------------------------------------------
_TYPE_CHECKS = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and math.isfinite(v) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    if not ref.startswith("#"):
        raise StructuredOutputError(f"only local $ref are supported, got {ref!r}", raw_text="")
    node: Any = root
    for part in ref[1:].split("/")[1:] if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _equal(a: Any, b: Any) -> bool:
    # JSON equality: 1 == 1.0 but True != 1
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _check(value: Any, schema: Any, root: dict[str, Any], path: str, out: list[str]) -> None:
    if schema is True or schema == {}:
        return
    if schema is False:
        out.append(f"{path}: no value is allowed here")
        return
    if not isinstance(schema, dict):
        return
    if "$ref" in schema:
        _check(value, _resolve(schema["$ref"], root), root, path, out)
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_TYPE_CHECKS.get(t, lambda _v: True)(value) for t in names):
            out.append(f"{path}: expected {' or '.join(names)}, got {type(value).__name__}")
            return
    if "enum" in schema and not any(_equal(value, e) for e in schema["enum"]):
        out.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and not _equal(value, schema["const"]):
        out.append(f"{path}: {value!r} is not {schema['const']!r}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                out.append(f"{path}: missing required property {key!r}")
        extra = schema.get("additionalProperties", True)
        patterns = schema.get("patternProperties", {})
        for key, item in value.items():
            if key in props:
                _check(item, props[key], root, f"{path}.{key}", out)
                continue
            matched = [p for p in patterns if re.search(p, key)]
            for p in matched:
                _check(item, patterns[p], root, f"{path}.{key}", out)
            if not matched:
                if extra is False:
                    out.append(f"{path}: unexpected property {key!r}")
                else:
                    _check(item, extra, root, f"{path}.{key}", out)
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            out.append(f"{path}: fewer than {schema['minProperties']} properties")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            out.append(f"{path}: more than {schema['maxProperties']} properties")
    if isinstance(value, list):
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(value):
            if i < len(prefix):
                _check(item, prefix[i], root, f"{path}[{i}]", out)
            elif "items" in schema:
                _check(item, schema["items"], root, f"{path}[{i}]", out)
        if "minItems" in schema and len(value) < schema["minItems"]:
            out.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            out.append(f"{path}: more than {schema['maxItems']} items")
        if schema.get("uniqueItems"):
            for i in range(len(value)):
                if any(_equal(value[i], value[j]) for j in range(i)):
                    out.append(f"{path}: items are not unique")
                    break
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            out.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append(f"{path}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{path}: does not match {schema['pattern']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{path}: {value} > maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            out.append(f"{path}: {value} <= exclusiveMinimum {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            out.append(f"{path}: {value} >= exclusiveMaximum {schema['exclusiveMaximum']}")
        if "multipleOf" in schema:
            quotient = value / schema["multipleOf"]
            if not math.isclose(quotient, round(quotient), abs_tol=1e-9):
                out.append(f"{path}: {value} is not a multiple of {schema['multipleOf']}")
    for sub in schema.get("allOf", []):
        _check(value, sub, root, path, out)
    if "anyOf" in schema and not any(schema_problems(value, s, _root=root) == [] for s in schema["anyOf"]):
        out.append(f"{path}: matches none of anyOf")
    if "oneOf" in schema:
        hits = sum(schema_problems(value, s, _root=root) == [] for s in schema["oneOf"])
        if hits != 1:
            out.append(f"{path}: matches {hits} of oneOf (exactly one required)")
    if "not" in schema and schema_problems(value, schema["not"], _root=root) == []:
        out.append(f"{path}: matches a 'not' schema")


def schema_problems(value: Any, schema: Any, *, _root: dict[str, Any] | None = None) -> list[str]:
    """Why ``value`` is not valid under ``schema`` (empty list: it is valid)."""
    problems: list[str] = []
    root = _root if _root is not None else (schema if isinstance(schema, dict) else {})
    _check(value, schema, root, "$", problems)
    return problems


def parse_structured_output(text: str, schema: dict[str, Any], *, extract: bool = True) -> dict[str, Any]:
    """The JSON object in ``text`` validated against ``schema``.

    ``extract=False`` requires the whole text to be the object (constrained output);
    otherwise fenced blocks and the first balanced object are tried. Raises
    :class:`StructuredOutputError` (carrying the text) when there is no valid object.
    """
    if extract:
        value = extract_json_object(text)
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, dict):
        raise StructuredOutputError("the model output contains no JSON object", raw_text=text)
    return validated(value, schema, raw_text=text)


def validated(value: Any, schema: dict[str, Any], *, raw_text: str | None = None) -> dict[str, Any]:
    """``value`` when it is a dict valid under ``schema``; else StructuredOutputError carrying
    ``raw_text`` (default: ``value`` as JSON, computed only on failure)."""
    problems = schema_problems(value, schema) if isinstance(value, dict) else None
    if problems == []:
        return value
    if raw_text is None:
        try:
            raw_text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            raw_text = repr(value)
    if problems is None:
        raise StructuredOutputError(f"expected a JSON object, got {type(value).__name__}", raw_text=raw_text)
    shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
    raise StructuredOutputError(
        f"the model output does not validate against the schema: {shown}",
        raw_text=raw_text,
        problems=tuple(problems),
    )


__all__ = ["extract_json_object", "parse_structured_output", "schema_problems", "validated"]
