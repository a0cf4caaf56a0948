"""A reference code generator on :class:`ProviderAdapter`: Rust functions that compile.

Flow: :class:`RustFunctionSpec` -> prompt -> :data:`RUST_GENERATION_SCHEMA` (our own schema:
imports, lifetimes, generic parameters with trait bounds, variables with mutability, error
handling, helper functions, implementation body) -> Rust source rendered from every part of
the schema -> ``rustc --crate-type lib`` in a temporary directory under a timeout. The edits
rustc suggests for its own errors are applied as ``cargo fix`` would (optional); a failure
that remains is fed back (the previous source and the compiler's errors in the prompt) up to
``max_attempts`` rounds of ``candidates`` answers each.

The signature's name, parameters and return type come from the spec; the lifetimes it names
are always declared, and the schema's ``lifetimes`` and ``generic_params`` add theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonlm.errors import ConfigError
from tritonlm.providers.adapter import ProviderAdapter
from tritonlm.providers.errors import StructuredOutputError
from tritonlm.providers.json_output import schema_problems

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


def _import_line(path: str) -> str:
    path = path.strip().removeprefix("use ").strip().rstrip(";").strip()
    return f"use {path};"


def _doc_lines(text: str) -> list[str]:
    return [f"/// {line}".rstrip() for line in text.strip().splitlines()] if text.strip() else []


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


@dataclass(frozen=True)
class SuggestedEdit:
    """A replacement rustc suggests for an error: bytes ``[start, end)`` of the source become
    ``replacement`` (``start == end`` inserts)."""

    start: int
    end: int
    replacement: str


@dataclass(frozen=True)
class CompileResult:
    """One rustc run. ``stderr`` is the compiler's human-readable output; ``suggestions`` are
    the edits rustc proposes for its errors (applicability MachineApplicable or MaybeIncorrect,
    one alternative per span, multi-part suggestions kept together as one tuple)."""

    ok: bool
    stderr: str
    timed_out: bool = False
    suggestions: tuple[tuple[SuggestedEdit, ...], ...] = ()


_APPLICABLE = frozenset({"MachineApplicable", "MaybeIncorrect"})


def _parse_diagnostics(stderr: str, file_name: str) -> tuple[str, tuple[tuple[SuggestedEdit, ...], ...]]:
    """rustc's ``--error-format=json`` stream -> (rendered text, suggested edits of the errors in
    ``file_name``; a suggestion touching another file, the standard library's, is dropped)."""
    rendered: list[str] = []
    suggestions: list[tuple[SuggestedEdit, ...]] = []
    for line in stderr.splitlines():
        try:
            diagnostic = json.loads(line)
        except ValueError:
            rendered.append(line + "\n")  # not a diagnostic (an ICE, a linker message)
            continue
        if not isinstance(diagnostic, dict):
            rendered.append(line + "\n")
            continue
        rendered.append(diagnostic.get("rendered") or diagnostic.get("message", "") + "\n")
        if diagnostic.get("level") != "error":
            continue
        for child in diagnostic.get("children", []):
            edits: dict[tuple[int, int], SuggestedEdit] = {}
            spans = [span for span in child.get("spans", []) if span.get("suggested_replacement") is not None]
            if any(span.get("file_name") != file_name for span in spans):
                continue
            for span in spans:
                if span.get("suggestion_applicability") not in _APPLICABLE:
                    continue
                key = (int(span["byte_start"]), int(span["byte_end"]))
                # spans with the same range are alternatives ("one of these imports"): the first
                # wins; spans with different ranges are parts of one suggestion
                edits.setdefault(key, SuggestedEdit(key[0], key[1], span["suggested_replacement"]))
            if edits:
                suggestions.append(tuple(sorted(edits.values(), key=lambda e: (e.start, e.end))))
    return "".join(rendered), tuple(dict.fromkeys(suggestions))


def _overlaps(a: SuggestedEdit, b: SuggestedEdit) -> bool:
    # half-open byte ranges; an insertion (start == end) conflicts only with a replacement whose
    # inside it falls in, never with another insertion or at a range's boundary
    return a.start < b.end and b.start < a.end


def apply_suggestions(source: str, suggestions: tuple[tuple[SuggestedEdit, ...], ...]) -> tuple[str, int]:
    """``source`` with rustc's suggested edits applied (as ``cargo fix`` / rustfix would): in
    order, a suggestion whose edits overlap an already chosen edit, or repeat one (two
    diagnostics proposing the same import), is skipped. Returns (new source, number of
    suggestions applied). Offsets are byte offsets into the UTF-8 source."""
    chosen: list[SuggestedEdit] = []
    applied = 0
    data = source.encode("utf-8")
    for suggestion in suggestions:
        if any(_overlaps(edit, other) for edit in suggestion for other in chosen):
            continue
        if any(edit in chosen for edit in suggestion):  # the same edit from two diagnostics
            continue
        chosen.extend(suggestion)
        applied += 1
    # apply from the end so earlier offsets stay valid; insertions at one point keep their order
    order = sorted(range(len(chosen)), key=lambda i: (chosen[i].start, chosen[i].end, i), reverse=True)
    for edit in (chosen[i] for i in order):
        data = data[: edit.start] + edit.replacement.encode("utf-8") + data[edit.end :]
    return data.decode("utf-8", errors="replace"), applied


async def compile_rust_lib(source: str, *, rustc: str = "rustc", timeout_s: float = 60.0) -> CompileResult:
    """``rustc --crate-type lib`` on ``source`` in a fresh temporary directory."""
    with tempfile.TemporaryDirectory(prefix="tritonlm-rust-") as tmp:
        src = Path(tmp) / "lib.rs"
        src.write_text(source, encoding="utf-8")
        process = await asyncio.create_subprocess_exec(
            rustc,
            "--crate-type",
            "lib",
            "--edition",
            "2021",
            "--crate-name",
            "generated",
            "--error-format=json",
            "--out-dir",
            tmp,
            str(src),
            cwd=tmp,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout_s)
        except asyncio.TimeoutError:  # not the builtin on Python 3.10
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return CompileResult(ok=False, stderr=f"rustc timed out after {timeout_s}s", timed_out=True)
        rendered, suggestions = _parse_diagnostics(stderr.decode(errors="replace"), str(src))
        ok = process.returncode == 0
        return CompileResult(ok=ok, stderr=rendered, suggestions=() if ok else suggestions)


async def compile_with_fixes(
    source: str, *, rustc: str = "rustc", timeout_s: float = 60.0, max_rounds: int = 3
) -> tuple[str, CompileResult, int]:
    """Compile ``source``; while it fails and rustc suggests edits, apply them and compile
    again (at most ``max_rounds`` times). Returns (final source, its compile result, number of
    suggestions applied)."""
    result = await compile_rust_lib(source, rustc=rustc, timeout_s=timeout_s)
    num_applied = 0
    for _ in range(max_rounds):
        if result.ok or not result.suggestions:
            break
        fixed, applied = apply_suggestions(source, result.suggestions)
        if applied == 0 or fixed == source:
            break
        source, num_applied = fixed, num_applied + applied
        result = await compile_rust_lib(source, rustc=rustc, timeout_s=timeout_s)
    return source, result, num_applied


@dataclass(frozen=True)
class RustAttempt:
    """One candidate of one round: a generation and its compile. ``generation`` is None when
    the model's answer did not validate against the schema (``error`` says why); ``source`` and
    ``compile`` are then None. ``generated_source`` is the source rendered from the generation;
    ``source`` is what was compiled last, after ``num_fixes`` compiler-suggested edits."""

    generation: dict[str, Any] | None
    source: str | None
    compile: CompileResult | None
    error: str | None = None
    round: int = 0
    generated_source: str | None = None
    num_fixes: int = 0

    @property
    def compiled(self) -> bool:
        return self.compile is not None and self.compile.ok

    @property
    def compiled_as_generated(self) -> bool:
        return self.compiled and self.num_fixes == 0


@dataclass(frozen=True)
class RustGenerationResult:
    spec: RustFunctionSpec
    attempts: tuple[RustAttempt, ...] = field(default=())

    @property
    def compiled(self) -> bool:
        return any(a.compiled for a in self.attempts)

    @property
    def compiled_as_generated(self) -> bool:
        """Whether some candidate compiled with no compiler-suggested edit."""
        return any(a.compiled_as_generated for a in self.attempts)

    @property
    def num_rounds(self) -> int:
        return 1 + max((a.round for a in self.attempts), default=-1)

    @property
    def schema_valid(self) -> bool:
        """Whether every answer of the model validated against the schema."""
        return all(a.generation is not None for a in self.attempts)

    @property
    def source(self) -> str | None:
        """A compiling source if any (one that compiled as generated first), else the source of
        the last attempt that produced one."""
        for attempt in sorted(self.attempts, key=lambda a: not a.compiled_as_generated):
            if attempt.compiled:
                return attempt.source
        for attempt in reversed(self.attempts):
            if attempt.source is not None:
                return attempt.source
        return None


def _num_errors(attempt: RustAttempt) -> float:
    if attempt.compile is None:
        return float("inf")
    return len(re.findall(r"^error(?:\[\w+\])?: (?!aborting)", attempt.compile.stderr, flags=re.M))


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


class RustGenerator:
    """Generates a compiling Rust function for a :class:`RustFunctionSpec` through an adapter.

    Each round asks for ``candidates`` answers at once (concurrent adapter calls, so a local
    engine decodes them in one batch; the very first at ``temperature``, all others at
    ``retry_temperature``) and compiles each. With ``compiler_fixes`` a failing candidate
    gets the edits rustc itself suggests for its errors (missing imports, a missing trait
    bound, ``.to_string()``...), as ``cargo fix`` would apply them, up to ``max_fix_rounds``
    times. The first candidate that compiles ends the loop; otherwise the candidate with the
    fewest errors is fed back, with those errors, to the next round, up to ``max_attempts``
    rounds.
    """

    def __init__(
        self,
        adapter: ProviderAdapter,
        *,
        max_attempts: int = 3,
        candidates: int = 1,
        compiler_fixes: bool = True,
        max_fix_rounds: int = 3,
        rustc: str = "rustc",
        compile_timeout_s: float = 60.0,
        max_tokens: int | None = None,
        temperature: float | None = None,
        retry_temperature: float | None = None,
    ) -> None:
        if not isinstance(adapter, ProviderAdapter):
            raise ConfigError(f"adapter must be a ProviderAdapter, got {type(adapter).__name__}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigError(f"max_attempts={max_attempts!r}: must be an integer >= 1")
        if not isinstance(candidates, int) or candidates < 1:
            raise ConfigError(f"candidates={candidates!r}: must be an integer >= 1")
        if not isinstance(max_fix_rounds, int) or max_fix_rounds < 0:
            raise ConfigError(f"max_fix_rounds={max_fix_rounds!r}: must be an integer >= 0")
        if shutil.which(rustc) is None:
            raise ConfigError(f"rustc not found: {rustc!r}")
        self.adapter = adapter
        self.max_attempts = max_attempts
        self.candidates = candidates
        self.max_fix_rounds = max_fix_rounds if compiler_fixes else 0
        self.rustc = rustc
        self.compile_timeout_s = compile_timeout_s
        self.max_tokens = max_tokens
        self.temperature = temperature
        # retries may sample more freely, so a model does not repeat the answer it just gave
        self.retry_temperature = retry_temperature if retry_temperature is not None else temperature

    @staticmethod
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

    async def _candidate(
        self, spec: RustFunctionSpec, prompt: str, round_index: int, temperature: float | None
    ) -> RustAttempt:
        try:
            prediction = await self.adapter(
                prompt=prompt, schema=RUST_GENERATION_SCHEMA, max_tokens=self.max_tokens, temperature=temperature
            )
        except StructuredOutputError as exc:
            return RustAttempt(generation=None, source=None, compile=None, error=str(exc), round=round_index)
        generation = {key: prediction[key] for key in RUST_GENERATION_SCHEMA["properties"]}
        problems = schema_problems(generation, RUST_GENERATION_SCHEMA)
        if problems:  # the adapter validated already; a broken provider must not slip through
            return RustAttempt(generation=None, source=None, compile=None, error="; ".join(problems), round=round_index)
        generated = render_rust_source(spec, generation)
        source, result, num_fixes = await compile_with_fixes(
            generated, rustc=self.rustc, timeout_s=self.compile_timeout_s, max_rounds=self.max_fix_rounds
        )
        return RustAttempt(
            generation=generation,
            source=source,
            compile=result,
            round=round_index,
            generated_source=generated,
            num_fixes=num_fixes,
        )

    async def generate(self, spec: RustFunctionSpec) -> RustGenerationResult:
        attempts: list[RustAttempt] = []
        previous: RustAttempt | None = None
        for round_index in range(self.max_attempts):
            prompt = self.build_prompt(spec, previous)
            # the first answer of the first round at `temperature`, every other one at the more
            # diverse `retry_temperature` (samples of one prompt should differ, and a retry
            # should not repeat the answer it follows)
            temperatures = [
                self.temperature if round_index == 0 and k == 0 else self.retry_temperature
                for k in range(self.candidates)
            ]
            tasks = [asyncio.ensure_future(self._candidate(spec, prompt, round_index, t)) for t in temperatures]
            try:
                candidates = await asyncio.gather(*tasks)
            except BaseException:  # a ProviderError (the provider failing) propagates; stop the others
                for task in tasks:
                    task.cancel()
                raise
            attempts.extend(candidates)
            if any(c.compiled for c in candidates):
                break
            previous = min(candidates, key=_num_errors)
        return RustGenerationResult(spec=spec, attempts=tuple(attempts))


__all__ = [
    "RUST_GENERATION_SCHEMA",
    "CompileResult",
    "RustAttempt",
    "RustFunctionSpec",
    "RustGenerationResult",
    "RustGenerator",
    "SuggestedEdit",
    "apply_suggestions",
    "compile_rust_lib",
    "compile_with_fixes",
    "render_rust_source",
]
