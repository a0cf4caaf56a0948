"""A reference code generator on :class:`~tritonlm.providers.ProviderAdapter`: Rust functions
that compile. An application of the providers, not part of their API, so
``tritonlm.providers`` does not import it.

Modules: :mod:`.schema` (the task and the answer's JSON schema), :mod:`.render` (answer ->
source), :mod:`.rustc` (compiling, rustc's suggested fixes), :mod:`.prompt` (the worked
example and the feedback), :mod:`.result` (attempts), :mod:`.generator` (the retry loop).
"""

from __future__ import annotations

from tritonlm.providers.rust.generator import RustGenerator
from tritonlm.providers.rust.prompt import EXAMPLE_GENERATION, EXAMPLE_SPEC, build_prompt
from tritonlm.providers.rust.render import render_rust_source
from tritonlm.providers.rust.result import RustAttempt, RustGenerationResult
from tritonlm.providers.rust.rustc import (
    CompileResult,
    SuggestedEdit,
    apply_suggestions,
    compile_rust_lib,
    compile_with_fixes,
)
from tritonlm.providers.rust.schema import RUST_GENERATION_SCHEMA, RustFunctionSpec, balanced_code_pattern

__all__ = [
    "EXAMPLE_GENERATION",
    "EXAMPLE_SPEC",
    "RUST_GENERATION_SCHEMA",
    "CompileResult",
    "RustAttempt",
    "RustFunctionSpec",
    "RustGenerationResult",
    "RustGenerator",
    "SuggestedEdit",
    "apply_suggestions",
    "balanced_code_pattern",
    "build_prompt",
    "compile_rust_lib",
    "compile_with_fixes",
    "render_rust_source",
]
