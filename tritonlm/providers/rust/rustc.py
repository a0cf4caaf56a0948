"""rustc as a subprocess: ``rustc --crate-type lib`` in a temporary directory under a timeout,
its JSON diagnostics parsed, and the edits it suggests for its own errors applied as
``cargo fix`` would (:func:`compile_with_fixes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path


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


__all__ = ["CompileResult", "SuggestedEdit", "apply_suggestions", "compile_rust_lib", "compile_with_fixes"]
