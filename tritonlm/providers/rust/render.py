"""Rust source from a generation: every part of :data:`RUST_GENERATION_SCHEMA` is used.

The signature's name, parameters and return type come from the spec; the lifetimes it names
are always declared, and the generation's ``lifetimes`` and ``generic_params`` add theirs.
Prose (the spec's description, the error handling's texts) becomes rustdoc, defused
(:func:`~tritonlm.providers.rust.sandbox.defuse_comment_text`) so that it passes the source
check.
"""

from __future__ import annotations

import re
from typing import Any

from tritonlm.providers.rust.sandbox import defuse_comment_text
from tritonlm.providers.rust.schema import RustFunctionSpec


def _import_line(path: str) -> str:
    path = path.strip().removeprefix("use ").strip().rstrip(";").strip()
    return f"use {path};"


def _doc_lines(text: str) -> list[str]:
    # prose, not code: a forbidden word or an attribute-like `#` in it is defused, not refused
    return [f"/// {defuse_comment_text(line)}".rstrip() for line in text.strip().splitlines()] if text.strip() else []


def render_rust_source(spec: RustFunctionSpec, generation: dict[str, Any]) -> str:
    """The Rust source of ``generation`` (valid under RUST_GENERATION_SCHEMA) for ``spec``.

    Every part is used: imports as ``use`` lines, helper functions before the function,
    lifetimes and bounded type parameters in its generics, the error handling as its rustdoc
    ``# Errors`` / ``# Panics`` section (and ``#[must_use]`` for Result/Option), the variables
    as ``let`` / ``let mut`` statements, then the implementation body.
    """
    lines: list[str] = []
    imports = list(dict.fromkeys(_import_line(i) for i in generation["imports"] if i.strip()))
    lines += imports
    if imports:
        lines.append("")
    for helper in generation["helper_functions"]:
        lines += [helper["code"].strip(), ""]

    error = generation["error_handling"]
    lines += _doc_lines(spec.description)
    section = {"result": "# Errors", "option": "# None", "panic": "# Panics"}.get(error["strategy"])
    if section:
        detail = error["description"].strip() or f"see {error['error_type']}"
        suffix = f" (`{error['error_type'].strip()}`)" if error["error_type"].strip() else ""
        lines += ["///", f"/// {section}", "///", *_doc_lines(detail + suffix)]
    if error["strategy"] in ("result", "option"):
        lines.append("#[must_use]")

    # the signature comes from the spec, so the lifetimes it names are declared whatever the
    # model listed (an undeclared one cannot compile); the model's own come after
    signature = f"{spec.signature_params} {spec.return_type or ''}"
    generics = list(
        dict.fromkeys(
            [lt for lt in re.findall(r"'[A-Za-z_][A-Za-z0-9_]*", signature) if lt != "'static"]
            + [lt.strip() for lt in generation["lifetimes"] if lt.strip()]
        )
    )
    for param in generation["generic_params"]:
        bounds = " + ".join(b.strip() for b in param["trait_bounds"] if b.strip())
        generics.append(f"{param['name']}: {bounds}" if bounds else param["name"])
    generic_list = f"<{', '.join(generics)}>" if generics else ""
    returns = f" -> {spec.return_type}" if spec.return_type else ""
    lines.append(f"pub fn {spec.name}{generic_list}({spec.signature_params}){returns} {{")
    for var in generation["variables"]:
        binding = f"mut {var['name']}" if var["mutable"] else var["name"]
        lines.append(f"    let {binding}: {var['type']} = {var['initial_value']};")
    for body_line in generation["implementation_body"].strip("\n").splitlines():
        lines.append(f"    {body_line}" if body_line.strip() else "")
    lines.append("}")
    return "\n".join(lines) + "\n"


__all__ = ["render_rust_source"]
