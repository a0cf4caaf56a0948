"""The JSON schema of a DSPy signature's output fields, for constrained decoding.

The output is one JSON object with a property per output field: required unless the field has
a default, no other properties. Field types map through pydantic's JSON schema: str, int,
float, bool, Literal, Enum, Optional / unions, list[...], tuple[...], dict[str, ...], nested
pydantic models (``$defs``/``$ref``, recursion included) and Any. A type pydantic cannot
describe, a DSPy custom type (Image, History, ToolCalls, ...) or a schema keyword the
constraint engine does not implement is a :class:`~tritonlm.errors.SchemaError` naming the
field, raised before anything is generated.
"""

from __future__ import annotations

import copy
from typing import Any

import pydantic
from dspy.adapters.types import Type as DSPyType
from pydantic.fields import FieldInfo

from tritonlm.constraints.schema import ANNOTATIONS, SUPPORTED
from tritonlm.errors import SchemaError

# Extra key on an output field's json_schema_extra: a JSON schema that replaces the one derived
# from the field's type (set by ``tritonlm.dspy_adapter.react``).
SCHEMA_OVERRIDE_KEY = "tritonlm_json_schema"
# Extra key on an output field holding tool arguments (ReAct's ``next_tool_args``):
# ``{"name_field": <output field naming the tool>, "tools": {tool name: arguments schema}}``.
# The output object then becomes one branch per tool, pairing each name with its arguments.
TOOL_ARGS_KEY = "tritonlm_tool_args"

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "additionalItems")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def _is_dspy_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, DSPyType)


def _walk(schema: Any, visit: Any, pointer: str = "") -> None:
    if not isinstance(schema, dict):
        return
    visit(schema, pointer)
    for key in _SUBSCHEMA_KEYS:
        if isinstance(schema.get(key), dict):
            _walk(schema[key], visit, f"{pointer}/{key}")
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key) or ()):
            _walk(sub, visit, f"{pointer}/{key}/{i}")
    for key in _SUBSCHEMA_MAPS:
        for name, sub in (schema.get(key) or {}).items():
            _walk(sub, visit, f"{pointer}/{key}/{name}")


def check_supported(schema: dict[str, Any], where: str) -> None:
    """Raise SchemaError if ``schema`` uses a keyword the constraint engine does not implement."""

    def visit(node: dict[str, Any], pointer: str) -> None:
        for keyword in node:
            if keyword not in SUPPORTED and keyword not in ANNOTATIONS:
                raise SchemaError(f"{where}: JSON schema keyword {keyword!r} at {pointer or '/'} is not supported")

    _walk(schema, visit)


def _close_objects(schema: dict[str, Any], max_string_length: int | None, max_items: int | None) -> None:
    """Objects with declared properties take no others; integers stay within int64 (so an
    integer cannot grow without end); strings get ``max_string_length``, arrays ``max_items``."""

    def visit(node: dict[str, Any], pointer: str) -> None:
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        if node.get("type") == "integer":
            if "minimum" not in node and "exclusiveMinimum" not in node:
                node["minimum"] = INT64_MIN
            if "maximum" not in node and "exclusiveMaximum" not in node:
                node["maximum"] = INT64_MAX
        if (
            max_string_length is not None
            and node.get("type") == "string"
            and not ({"enum", "const", "format", "pattern"} & node.keys())
        ):
            node["maxLength"] = min(node.get("maxLength", max_string_length), max_string_length)
        if max_items is not None and node.get("type") == "array":
            node["maxItems"] = min(node.get("maxItems", max_items), max_items)

    _walk(schema, visit)


def field_schema(name: str, field: FieldInfo) -> dict[str, Any]:
    """The JSON schema of one output field's type (SchemaError naming the field otherwise)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    override = extra.get(SCHEMA_OVERRIDE_KEY)
    if isinstance(override, dict):
        schema = copy.deepcopy(override)
    else:
        annotation = field.annotation
        if _is_dspy_type(annotation):
            raise SchemaError(
                f"output field {name!r}: DSPy type {annotation.__name__} cannot be decoded under a JSON grammar"
            )
        try:
            schema = pydantic.TypeAdapter(annotation).json_schema()
        except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticInvalidForJsonSchema, TypeError) as exc:
            raise SchemaError(f"output field {name!r}: type {annotation!r} has no JSON schema ({exc})") from exc
    check_supported(schema, f"output field {name!r}")
    return schema


def _tool_branches(
    root: dict[str, Any], args_field: str, name_field: str, tools: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    branches = []
    for tool_name, args_schema in tools.items():
        check_supported(args_schema, f"output field {args_field!r} (tool {tool_name!r})")
        branch = copy.deepcopy(root)
        branch["properties"][name_field] = {"const": tool_name}
        branch["properties"][args_field] = copy.deepcopy(args_schema)
        branches.append(branch)
    return {"anyOf": branches}


def signature_json_schema(
    signature: Any, *, max_string_length: int | None = None, max_items: int | None = None
) -> dict[str, Any]:
    """The schema of the JSON object holding ``signature``'s output fields.

    ``max_string_length`` bounds every free string and ``max_items`` every array, so that a
    model that never closes a string or a list on its own still finishes within max_tokens.
    """
    properties: dict[str, Any] = {}
    defs: dict[str, Any] = {}
    required: list[str] = []
    for name, field in signature.output_fields.items():
        schema = field_schema(name, field)
        for def_name, definition in schema.pop("$defs", {}).items():
            if def_name in defs and defs[def_name] != definition:
                raise SchemaError(f"output field {name!r}: two different models are both named {def_name!r}")
            defs[def_name] = definition
        properties[name] = schema
        if field.is_required():
            required.append(name)
    root: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    for name, field in signature.output_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        tool_args = extra.get(TOOL_ARGS_KEY)
        if isinstance(tool_args, dict):
            root = _tool_branches(root, name, tool_args["name_field"], tool_args["tools"])
    if defs:
        root["$defs"] = defs
    _close_objects(root, max_string_length, max_items)
    return root


__all__ = ["SCHEMA_OVERRIDE_KEY", "TOOL_ARGS_KEY", "check_supported", "field_schema", "signature_json_schema"]
