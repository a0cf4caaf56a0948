"""rustc as a subprocess: ``rustc --crate-type lib`` on a checked source, sandboxed, under a
timeout; its JSON diagnostics parsed, and the edits it suggests for its own errors applied as
``cargo fix`` would (:func:`compile_with_fixes`).

Each run: the source passes :func:`~tritonlm.providers.rust.sandbox.check_source` first (else
:class:`~tritonlm.providers.rust.sandbox.UnsafeSourceError`); rustc runs in a private
temporary directory (mode 0700, removed afterwards) with an environment of its own
(:func:`~tritonlm.providers.rust.sandbox.rustc_environment`) and the resource limits of a
:class:`~tritonlm.providers.rust.sandbox.RustcLimits`. Only diagnostics about the generated
file reach :attr:`CompileResult.stderr` (the text fed back to the model): one that points into
another file is replaced by a line saying so, a note quoting another file is dropped, and
whatever rustc prints that is not a diagnostic is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonlm.providers.rust.sandbox import (
    RustcLimits,
    check_source,
    limit_process,
    rustc_environment,
    source_problems,
)

SOURCE_NAME = "lib.rs"  # the generated file, as rustc names it in its diagnostics


@dataclass(frozen=True)
class SuggestedEdit:
    """A replacement rustc suggests for an error: bytes ``[start, end)`` of the source become
    ``replacement`` (``start == end`` inserts)."""

    start: int
    end: int
    replacement: str


@dataclass(frozen=True)
class CompileResult:
    """One rustc run. ``stderr`` is the compiler's human-readable output about the generated
    file only (see the module); ``suggestions`` are the edits rustc proposes for its errors
    (applicability MachineApplicable or MaybeIncorrect, one alternative per span, multi-part
    suggestions kept together as one tuple). ``limit`` names the :class:`RustcLimits` limit
    that stopped rustc ("cpu", "memory" or "file_size"), ``timed_out`` the wall-clock one."""

    ok: bool
    stderr: str
    timed_out: bool = False
    suggestions: tuple[tuple[SuggestedEdit, ...], ...] = ()
    limit: str | None = None


_APPLICABLE = frozenset({"MachineApplicable", "MaybeIncorrect"})


def _spans_local(item: dict[str, Any], file_name: str, *, primary_only: bool = False) -> bool:
    spans = [s for s in item.get("spans") or [] if not primary_only or s.get("is_primary")]
    return all(isinstance(s, dict) and s.get("file_name") == file_name for s in spans)


def _all_local(item: dict[str, Any], file_name: str) -> bool:
    """Whether every span of ``item`` and of its children is in ``file_name``."""
    return _spans_local(item, file_name) and all(
        isinstance(child, dict) and _all_local(child, file_name) for child in item.get("children") or []
    )


def _snippet(span: dict[str, Any]) -> list[str]:
    """A span's lines (as rustc quotes them from the generated file) with ``^`` under the
    highlighted part and its label."""
    lines = []
    for number, text in enumerate(span.get("text") or [], start=int(span.get("line_start") or 0)):
        line = str(text.get("text", ""))
        start, end = int(text.get("highlight_start") or 1), int(text.get("highlight_end") or 1)
        lines.append(f"{number:>3} | {line}")
        marks = " " * (start - 1) + "^" * max(1, end - start)
        lines.append(f"    | {marks} {span.get('label') or ''}".rstrip())
    return lines


def _render(diagnostic: dict[str, Any], file_name: str) -> str:
    """rustc's layout, reduced, for a diagnostic whose secondary spans or notes point into other
    files: its message, its spans in ``file_name``, its other notes."""
    code = diagnostic.get("code") or {}
    name = f"[{code['code']}]" if isinstance(code, dict) and code.get("code") else ""
    lines = [f"{diagnostic.get('level', 'error')}{name}: {diagnostic.get('message', '')}"]
    spans = [s for s in diagnostic.get("spans") or [] if s.get("file_name") == file_name]
    primary = next((s for s in spans if s.get("is_primary")), spans[0] if spans else None)
    if primary is not None:
        lines.append(f"   --> {file_name}:{primary.get('line_start')}:{primary.get('column_start')}")
    for span in spans:
        lines += _snippet(span)
    for child in diagnostic.get("children") or []:
        if isinstance(child, dict) and _all_local(child, file_name):
            lines.append(f"    = {child.get('level', 'note')}: {child.get('message', '')}")
    return "\n".join(lines) + "\n\n"


def _shown(diagnostic: dict[str, Any], file_name: str) -> str:
    """What the prompt may see of one diagnostic."""
    if not _spans_local(diagnostic, file_name, primary_only=True):
        if diagnostic.get("level") == "error":
            return "error: a diagnostic about another file than the generated source (not shown)\n"
        return ""
    if _all_local(diagnostic, file_name):
        return diagnostic.get("rendered") or diagnostic.get("message", "") + "\n"
    return _render(diagnostic, file_name)


def _parse_diagnostics(stderr: str, file_name: str) -> tuple[str, tuple[tuple[SuggestedEdit, ...], ...]]:
    """rustc's ``--error-format=json`` stream -> (the text of its diagnostics about
    ``file_name``, suggested edits of the errors in ``file_name``; a suggestion touching
    another file, the standard library's, is dropped). Lines that are not diagnostics (an ICE,
    a linker message) are left out: they can quote anything."""
    rendered: list[str] = []
    suggestions: list[tuple[SuggestedEdit, ...]] = []
    for line in stderr.splitlines():
        try:
            diagnostic = json.loads(line)
        except ValueError:
            continue
        if not isinstance(diagnostic, dict):
            continue
        rendered.append(_shown(diagnostic, file_name))
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


@functools.lru_cache(maxsize=16)
def toolchain_rustc(rustc: str) -> str:
    """The executable to run for ``rustc``: behind a rustup proxy, the toolchain's own rustc
    (the proxy picks a toolchain from HOME and RUSTUP_* variables, which a sandboxed run does
    not have); else ``rustc`` itself. Asks ``rustc --print sysroot`` once per path, with the
    caller's environment and no source."""
    path = shutil.which(rustc) or rustc
    try:
        printed = subprocess.run(
            [path, "--print", "sysroot"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return path
    sysroot = printed.stdout.strip()
    candidate = Path(sysroot) / "bin" / "rustc"
    if printed.returncode == 0 and sysroot and candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return path


_CONST_EVAL_OUT_OF_MEMORY = "tried to allocate more memory than available to compiler"
# what an allocation failure prints outside the JSON stream (rustc's abort, LLVM, the loader)
_MEMORY_SIGNS = ("memory allocation of", "out of memory", "failed to map segment", "Cannot allocate memory")


def _compiler_texts(raw_stderr: str) -> tuple[set[str], list[str]]:
    """(the messages of rustc's diagnostics, its lines that are not diagnostics): text the
    compiler wrote, not quoted from the source (a span's snippet or label can be anything)."""
    messages: set[str] = set()
    other: list[str] = []
    for line in raw_stderr.splitlines():
        try:
            diagnostic = json.loads(line)
        except ValueError:
            other.append(line)
            continue
        if isinstance(diagnostic, dict) and isinstance(diagnostic.get("message"), str):
            messages.add(diagnostic["message"])
    return messages, other


def _limit_hit(returncode: int, raw_stderr: str) -> str | None:
    """Which RustcLimits limit stopped rustc, if one did (a timeout is told apart before).
    SIGKILL without a timeout is the hard CPU limit's."""
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "cpu"
    if returncode == -signal.SIGXFSZ:
        return "file_size"
    if returncode == 0:
        return None
    messages, other = _compiler_texts(raw_stderr)
    if _CONST_EVAL_OUT_OF_MEMORY in messages or any(sign in line for line in other for sign in _MEMORY_SIGNS):
        return "memory"
    if any("File too large" in text for text in (*other, *(m for m in messages if "os error 27" in m))):
        return "file_size"
    return None


def _limit_line(limit: str, limits: RustcLimits) -> str:
    value = {
        "cpu": f"{limits.cpu_seconds} s of CPU time",
        "memory": f"{limits.memory_bytes >> 20} MiB of memory",
        "file_size": f"files of {limits.file_size_bytes >> 20} MiB",
    }[limit]
    return f"error: rustc was stopped at its limit of {value}\n"


async def _run_rustc(binary: str, private: str, limits: RustcLimits, timeout_s: float) -> tuple[int | None, str]:
    """rustc on ``private``/lib.rs: (exit status, or None on timeout; its stderr)."""
    process = await asyncio.create_subprocess_exec(
        binary,
        "--crate-type",
        "lib",
        "--edition",
        "2021",
        "--crate-name",
        "generated",
        "--error-format=json",
        "--out-dir",
        ".",
        SOURCE_NAME,
        cwd=private,
        env=rustc_environment(private),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=limit_process(limits),  # only setrlimit calls between fork and exec
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout_s)
    except asyncio.TimeoutError:  # not the builtin on Python 3.10
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return None, ""
    return process.returncode, stderr.decode(errors="replace")


async def compile_rust_lib(
    source: str, *, rustc: str = "rustc", timeout_s: float = 60.0, limits: RustcLimits | None = None
) -> CompileResult:
    """``rustc --crate-type lib`` on ``source``, sandboxed (see the module). Raises
    :class:`~tritonlm.providers.rust.sandbox.UnsafeSourceError` before running anything if
    the source check refuses ``source``."""
    check_source(source)
    limits = limits if limits is not None else RustcLimits()
    binary = await asyncio.to_thread(toolchain_rustc, rustc)
    with tempfile.TemporaryDirectory(prefix="tritonlm-rust-") as private:
        os.chmod(private, 0o700)  # mkdtemp's mode already; said here because it matters
        os.mkdir(os.path.join(private, "tmp"), 0o700)
        Path(private, SOURCE_NAME).write_text(source, encoding="utf-8")
        returncode, raw = await _run_rustc(binary, private, limits, timeout_s)
    if returncode is None:
        return CompileResult(ok=False, stderr=f"error: rustc timed out after {timeout_s}s\n", timed_out=True)
    rendered, suggestions = _parse_diagnostics(raw, SOURCE_NAME)
    ok = returncode == 0
    limit = None if ok else _limit_hit(returncode, raw)
    if limit is not None:
        rendered = _limit_line(limit, limits) + rendered
    elif not ok and not re.search(r"^error", rendered, flags=re.M):
        rendered += f"error: rustc failed (exit status {returncode}) without a diagnostic about the source\n"
    return CompileResult(ok=ok, stderr=rendered, suggestions=() if ok else suggestions, limit=limit)


async def compile_with_fixes(
    source: str,
    *,
    rustc: str = "rustc",
    timeout_s: float = 60.0,
    max_rounds: int = 3,
    limits: RustcLimits | None = None,
) -> tuple[str, CompileResult, int]:
    """Compile ``source``; while it fails and rustc suggests edits, apply them and compile
    again (at most ``max_rounds`` times). An edited source the source check would refuse (a
    suggested ``#[derive(..)]``) ends the loop. Returns (final source, its compile result,
    number of suggestions applied)."""
    result = await compile_rust_lib(source, rustc=rustc, timeout_s=timeout_s, limits=limits)
    num_applied = 0
    for _ in range(max_rounds):
        if result.ok or not result.suggestions:
            break
        fixed, applied = apply_suggestions(source, result.suggestions)
        if applied == 0 or fixed == source or source_problems(fixed):
            break
        source, num_applied = fixed, num_applied + applied
        result = await compile_rust_lib(source, rustc=rustc, timeout_s=timeout_s, limits=limits)
    return source, result, num_applied


__all__ = [
    "SOURCE_NAME",
    "CompileResult",
    "SuggestedEdit",
    "apply_suggestions",
    "compile_rust_lib",
    "compile_with_fixes",
    "toolchain_rustc",
]
