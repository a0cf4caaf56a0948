"""The Rust generator's contract with the model: :class:`RustFunctionSpec` (the task) and
:data:`RUST_GENERATION_SCHEMA` (the JSON answer: imports, lifetimes, generic parameters with
trait bounds, variables with mutability, error handling, helper functions, implementation body).

The schema's regex patterns use the constraint engine's subset, so a constrained generation
can only produce bodies whose brackets pair up and that define no nested ``fn``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tritonlm.errors import ConfigError

_IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"

_TYPE_PARAM = r"^[A-Z][A-Za-z0-9]*$"  # CamelCase: a type parameter never shadows a type like u32


def balanced_code_pattern(depth: int, *, forbid_fn: bool) -> str:
    """A regex (our constraint engine's subset) for Rust code whose ``{ }`` and ``( )`` pair up,
    nested at most ``depth`` deep, brackets inside ``"..."`` string literals not counted. With
    ``forbid_fn`` no identifier outside strings starts with ``fn`` (so no ``fn`` item, nor the
    ``fnname`` a small model writes to get round that). Char literals such as ``'{'`` and raw
    strings are not recognised (a bracket in one counts); comments are code."""
    string = r'"(?:[^"\\]|\\[\s\S])*"'
    if forbid_fn:
        # a segment alternates separators (non-identifier characters, strings) and whole
        # identifiers, so "fn" can only be the start of an identifier, which `word` excludes
        separator = rf'(?:[^A-Za-z0-9_{{}}()"]|{string})'
        word = r"(?:[A-Za-eg-z0-9_][A-Za-z0-9_]*|f(?:[A-Za-mo-z0-9_][A-Za-z0-9_]*)?)"
        segment = rf"{separator}*(?:{word}{separator}+)*(?:{word})?"
    else:
        segment = rf'(?:[^{{}}()"]|{string})*'
    level = segment
    for _ in range(depth):
        level = rf"{segment}(?:(?:\{{{level}\}}|\({level}\)){segment})*"
    return level


# statements: brackets balanced, no nested `fn` items (helpers have their own field), and the
# last character closes an expression or a statement (not inside an open call or block)
_BODY_PATTERNS = ("^" + balanced_code_pattern(5, forbid_fn=True) + "$", r"[^\s(\[{,=]\s*$")
_HELPER_PATTERN = (
    r'^(?:pub(?:\([a-z]+\))? )?fn [A-Za-z_][A-Za-z0-9_]*[<(][^{}"]*\{'
    + balanced_code_pattern(4, forbid_fn=False)
    + r"\}\s*$"
)

_TRAIT_BOUND = r"^[A-Za-z_?'][A-Za-z0-9_:<>, ()'&=+-]*$"

# Array and string bounds keep a small model from looping inside one field (and keep a
# constrained generation inside max_tokens); they are far above what a function needs.
RUST_GENERATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "imports": {
            "type": "array",
            "description": "use paths without 'use' and ';', e.g. std::collections::HashMap",
            "items": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_:{}, *]*$", "maxLength": 100},
            "maxItems": 6,
        },
        "lifetimes": {
            "type": "array",
            "description": "lifetime parameters of the function, e.g. 'a",
            "items": {"type": "string", "pattern": r"^'[a-z][a-z0-9_]*$", "maxLength": 12},
            "maxItems": 3,
        },
        "generic_params": {
            "type": "array",
            "description": "type parameters of the function with their trait bounds",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "pattern": _TYPE_PARAM, "maxLength": 20},
                    "trait_bounds": {
                        "type": "array",
                        "items": {"type": "string", "pattern": _TRAIT_BOUND, "maxLength": 60},
                        "maxItems": 5,
                    },
                },
                "required": ["name", "trait_bounds"],
                "additionalProperties": False,
            },
            "maxItems": 3,
        },
        "variables": {
            "type": "array",
            "description": "local variables declared before the body, in order",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "pattern": _IDENT, "maxLength": 40},
                    "type": {"type": "string", "maxLength": 100},
                    "mutable": {"type": "boolean"},
                    "initial_value": {"type": "string", "maxLength": 300},
                },
                "required": ["name", "type", "mutable", "initial_value"],
                "additionalProperties": False,
            },
            "maxItems": 6,
        },
        "error_handling": {
            "type": "object",
            "properties": {
                "strategy": {"enum": ["none", "result", "option", "panic"]},
                "error_type": {"type": "string", "maxLength": 100},
                "description": {"type": "string", "maxLength": 300},
            },
            "required": ["strategy", "error_type", "description"],
            "additionalProperties": False,
        },
        "helper_functions": {
            "type": "array",
            "description": "complete private Rust functions the body calls",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "pattern": _IDENT, "maxLength": 40},
                    "code": {"type": "string", "pattern": _HELPER_PATTERN},
                },
                "required": ["name", "code"],
                "additionalProperties": False,
            },
            "maxItems": 3,
        },
        "implementation_body": {
            "type": "string",
            "description": "the statements of the function body after the variables, ending with the result",
            # No maxLength (with the patterns it makes the grammar much slower to compile):
            # max_tokens bounds the body, and the engine closes the document within it.
            "allOf": [{"pattern": pattern} for pattern in _BODY_PATTERNS],
        },
    },
    "required": [
        "imports",
        "lifetimes",
        "generic_params",
        "variables",
        "error_handling",
        "helper_functions",
        "implementation_body",
    ],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class RustFunctionSpec:
    """What to generate: ``pub fn name(parameters) -> return_type`` doing ``description``.

    ``parameters`` are (name, Rust type) pairs; types may use the lifetimes and type
    parameters the generator declares (say which in ``description``). ``return_type=None`` is
    ``()``. ``examples`` are short behaviour examples for the prompt.
    """

    name: str
    description: str
    parameters: tuple[tuple[str, str], ...] = ()
    return_type: str | None = None
    examples: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", tuple(tuple(p) for p in self.parameters))
        object.__setattr__(self, "examples", tuple(self.examples))
        if not re.match(_IDENT, self.name):
            raise ConfigError(f"RustFunctionSpec.name={self.name!r}: not a Rust identifier")
        if not self.description.strip():
            raise ConfigError("RustFunctionSpec.description must not be empty")
        for param in self.parameters:
            if len(param) != 2 or not re.match(_IDENT, param[0]) or not param[1].strip():
                raise ConfigError(f"RustFunctionSpec.parameters: bad (name, type) pair {param!r}")

    @property
    def signature_params(self) -> str:
        return ", ".join(f"{name}: {ty}" for name, ty in self.parameters)


__all__ = ["RUST_GENERATION_SCHEMA", "RustFunctionSpec", "balanced_code_pattern"]
