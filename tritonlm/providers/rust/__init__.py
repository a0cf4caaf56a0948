"""A reference code generator on :class:`~tritonlm.providers.ProviderAdapter`: Rust functions
that compile. An application of the providers, not part of their API, so
``tritonlm.providers`` does not import it.

Modules: :mod:`.schema` (the task and the answer's JSON schema), :mod:`.render` (answer ->
source), :mod:`.sandbox` (the source check before every rustc run, rustc's limits and
environment), :mod:`.rustc` (compiling, rustc's suggested fixes), :mod:`.prompt` (the worked
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
from tritonlm.providers.rust.sandbox import (
    FORBIDDEN_IDENTIFIERS,
    RustcLimits,
    UnsafeSourceError,
    check_source,
    source_problems,
)
from tritonlm.providers.rust.schema import (
    RUST_GENERATION_SCHEMA,
    RustFunctionSpec,
    balanced_code_pattern,
    safe_code_pattern,
)

__all__ = [
    "EXAMPLE_GENERATION",
    "EXAMPLE_SPEC",
    "FORBIDDEN_IDENTIFIERS",
    "RUST_GENERATION_SCHEMA",
    "CompileResult",
    "RustAttempt",
    "RustFunctionSpec",
    "RustGenerationResult",
    "RustGenerator",
    "RustcLimits",
    "SuggestedEdit",
    "UnsafeSourceError",
    "apply_suggestions",
    "balanced_code_pattern",
    "build_prompt",
    "check_source",
    "compile_rust_lib",
    "compile_with_fixes",
    "render_rust_source",
    "safe_code_pattern",
    "source_problems",
]
