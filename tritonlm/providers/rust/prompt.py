"""The prompt of one attempt: the field rules, a worked example (:data:`EXAMPLE_SPEC`,
:data:`EXAMPLE_GENERATION`), the task, and after a failed attempt its source and the
compiler's errors."""

from __future__ import annotations

import json
import re
from typing import Any

from tritonlm.providers.rust.render import render_rust_source
from tritonlm.providers.rust.result import RustAttempt
from tritonlm.providers.rust.schema import RustFunctionSpec


def _first_errors(stderr: str, limit: int = 1500) -> str:
    """The compiler's error messages (warnings dropped), cut to ``limit`` characters."""
    blocks = re.split(r"\n(?=(?:error|warning)(?:\[\w+\])?: )", stderr)
    errors = [b for b in blocks if b.startswith("error")] or [stderr]
    text = "\n".join(errors).strip()
    return text if len(text) <= limit else text[:limit] + "\n..."


def _task_text(spec: RustFunctionSpec) -> str:
    returns = f" -> {spec.return_type}" if spec.return_type else ""
    text = f"pub fn {spec.name}({spec.signature_params}){returns}\n{spec.description}"
    if spec.examples:
        text += "\nExamples: " + "; ".join(spec.examples)
    return text


# The worked example of the prompt (it uses every field; a test checks that it compiles).
EXAMPLE_SPEC = RustFunctionSpec(
    name="find_first",
    description=(
        "Return a reference to the first element of items equal to target, or an error naming the target. "
        "Uses a lifetime 'a and a type parameter T: PartialEq + Debug."
    ),
    parameters=(("items", "&'a [T]"), ("target", "&T")),
    return_type="Result<&'a T, String>",
    examples=("find_first(&[1, 2, 3], &2) == Ok(&2)", 'find_first(&[1], &5) == Err("5 not found".to_string())'),
)
EXAMPLE_GENERATION: dict[str, Any] = {
    "imports": ["std::fmt::Debug"],
    "lifetimes": ["'a"],
    "generic_params": [{"name": "T", "trait_bounds": ["PartialEq", "Debug"]}],
    "variables": [
        {"name": "position", "type": "Option<usize>", "mutable": False, "initial_value": "index_of(items, target)"}
    ],
    "error_handling": {
        "strategy": "result",
        "error_type": "String",
        "description": "Err when target is not in items.",
    },
    "helper_functions": [
        {
            "name": "index_of",
            "code": "fn index_of<T: PartialEq>(items: &[T], target: &T) -> Option<usize> {\n"
            "    items.iter().position(|item| item == target)\n}",
        }
    ],
    "implementation_body": (
        'match position {\n    Some(i) => Ok(&items[i]),\n    None => Err(format!("{:?} not found", target)),\n}'
    ),
}


def build_prompt(spec: RustFunctionSpec, previous: RustAttempt | None = None) -> str:
    """The prompt of one attempt: the field rules, a worked example, the task, and after a
    failed attempt its source and the compiler's errors (or why the answer was invalid)."""
    parts = [
        "Write one Rust function as a JSON object. Its fields are assembled into the source like this:\n"
        "  use <imports>;\n  <helper_functions code>\n"
        "  pub fn NAME<lifetimes, generic_params with trait_bounds>(PARAMETERS) -> RETURN {\n"
        "      let [mut] <variables>;\n      <implementation_body>\n  }\n"
        "Rules: the signature's name, parameters and return type are fixed by the task; declare in lifetimes "
        "and generic_params exactly the lifetimes and type parameters it uses. implementation_body holds only "
        "the statements inside the function (no signature, no helper code); its last expression is the "
        "result; its braces pair up and it defines no fn (helper_functions are complete private fn items, usually "
        "none). generic_params is empty unless the signature uses a type parameter. The parameters are in "
        "scope: do not redeclare them. "
        "Use only the standard library; prelude traits (Copy, Clone, PartialEq, PartialOrd, Eq, Ord, Default) "
        "need no import. A String error needs .to_string() or format!. Inside JSON strings write a double "
        'quote as \\" and a line break as \\n.',
        "Example task: " + _task_text(EXAMPLE_SPEC),
        "Example answer:\n" + json.dumps(EXAMPLE_GENERATION, indent=None),
        "Example source:\n```rust\n" + render_rust_source(EXAMPLE_SPEC, EXAMPLE_GENERATION) + "```",
        "Task: " + _task_text(spec),
    ]
    if previous is not None:
        if previous.source is not None and previous.compile is not None:
            parts.append(
                "Your previous answer assembled to:\n```rust\n"
                + previous.source
                + "```\nrustc rejected it:\n"
                + _first_errors(previous.compile.stderr)
                + "\nAnswer again with a corrected JSON object."
            )
        elif previous.error:
            parts.append(f"Your previous answer was not valid: {previous.error[:500]}\nAnswer again.")
    return "\n\n".join(parts)


__all__ = ["EXAMPLE_GENERATION", "EXAMPLE_SPEC", "build_prompt"]
