"""ReAct with every step constrained: the tool name to the tools, the arguments to that tool's schema.

``dspy.ReAct`` declares ``next_tool_name: Literal[<tool names>]`` (already a grammar) and
``next_tool_args: dict[str, Any]`` (any object). :func:`constrain_react` tags ``next_tool_args``
with each tool's argument schema; :class:`~tritonlm.dspy_adapter.adapter.ConstrainedJSONAdapter`
then decodes the step as one branch per tool, so the arguments always fit the chosen tool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dspy

from tritonlm.dspy_adapter.schema import TOOL_ARGS_KEY

TOOL_NAME_FIELD = "next_tool_name"
TOOL_ARGS_FIELD = "next_tool_args"


def tool_arguments_schema(tool: dspy.Tool) -> dict[str, Any]:
    """The JSON schema of ``tool``'s keyword arguments (all required, no others)."""
    properties = {name: dict(schema) for name, schema in (tool.args or {}).items()}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def constrain_react(react: dspy.ReAct) -> dspy.ReAct:
    """Tag ``react``'s step signature with its tools' argument schemas (in place; returns it)."""
    tools = {name: tool_arguments_schema(tool) for name, tool in react.tools.items()}
    react.react.signature = react.react.signature.with_updated_fields(
        TOOL_ARGS_FIELD, **{TOOL_ARGS_KEY: {"name_field": TOOL_NAME_FIELD, "tools": tools}}
    )
    return react


class ReAct(dspy.ReAct):
    """``dspy.ReAct`` whose steps are constrained to valid tool calls (see :func:`constrain_react`)."""

    def __init__(self, signature: Any, tools: list[Callable[..., Any] | dspy.Tool], max_iters: int = 20) -> None:
        super().__init__(signature, tools, max_iters=max_iters)
        constrain_react(self)


__all__ = ["ReAct", "constrain_react", "tool_arguments_schema"]
