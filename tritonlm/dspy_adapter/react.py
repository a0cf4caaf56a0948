"""ReAct with every step constrained: the tool name to the tools, the arguments to that tool's schema.

``dspy.ReAct`` declares ``next_tool_name: Literal[<tool names>]`` (already a grammar) and
``next_tool_args: dict[str, Any]`` (any object). :func:`constrain_react` tags ``next_tool_args``
with each tool's argument schema; :class:`~tritonlm.dspy_adapter.adapter.ConstrainedJSONAdapter`
then decodes the step as one branch per tool, so the arguments always fit the chosen tool.

:class:`ReAct` also breaks the loop small models fall into, calling one tool with the same
arguments again and again: once a step repeats an earlier call exactly, that tool is left out
of the next step's grammar (``finish`` never is), so the next step moves on.
"""

from __future__ import annotations

import json
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


def repeated_tools(trajectory: dict[str, Any]) -> set[str]:
    """Tools whose latest call in ``trajectory`` repeats an earlier call exactly (same arguments)."""
    calls: list[tuple[str, str]] = []
    idx = 0
    while f"tool_name_{idx}" in trajectory:
        args = json.dumps(trajectory.get(f"tool_args_{idx}"), sort_keys=True, default=str)
        calls.append((trajectory[f"tool_name_{idx}"], args))
        idx += 1
    latest: dict[str, int] = {}
    for i, (name, _) in enumerate(calls):
        latest[name] = i
    return {name for name, i in latest.items() if name != "finish" and calls[i] in calls[:i]}


class ReAct(dspy.ReAct):
    """``dspy.ReAct`` whose steps are constrained to valid tool calls (see :func:`constrain_react`),
    and whose next step leaves out a tool that was just called again with the same arguments."""

    def __init__(self, signature: Any, tools: list[Callable[..., Any] | dspy.Tool], max_iters: int = 20) -> None:
        super().__init__(signature, tools, max_iters=max_iters)
        constrain_react(self)

    def _step_module(self, module: Any, trajectory: dict[str, Any]) -> Any:
        """``module``, or for a step after a repeated call a copy of the step predictor whose
        grammar leaves the repeated tools out (the shared predictor is never changed)."""
        repeated = repeated_tools(trajectory) if module is self.react else set()
        if not repeated:
            return module
        field = module.signature.output_fields[TOOL_ARGS_FIELD]
        tagged = dict((field.json_schema_extra or {}).get(TOOL_ARGS_KEY) or {})
        tools = {name: schema for name, schema in tagged.get("tools", {}).items() if name not in repeated}
        step = module.deepcopy()
        step.signature = module.signature.with_updated_fields(
            TOOL_ARGS_FIELD, **{TOOL_ARGS_KEY: {**tagged, "tools": tools}}
        )
        return step

    def _call_with_potential_trajectory_truncation(self, module: Any, trajectory: dict[str, Any], **input_args: Any):
        return super()._call_with_potential_trajectory_truncation(
            self._step_module(module, trajectory), trajectory, **input_args
        )

    async def _async_call_with_potential_trajectory_truncation(
        self, module: Any, trajectory: dict[str, Any], **input_args: Any
    ):
        return await super()._async_call_with_potential_trajectory_truncation(
            self._step_module(module, trajectory), trajectory, **input_args
        )


__all__ = ["ReAct", "constrain_react", "repeated_tools", "tool_arguments_schema"]
