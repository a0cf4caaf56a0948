"""What a rustc run may see and use.

* :func:`check_source` refuses, before any rustc run, a source that names a macro reading a
  file or the environment at compile time (:data:`FORBIDDEN_IDENTIFIERS`) or that writes an
  attribute (``#[..]``, ``#![..]``); the generator's own ``#[must_use]`` is the one exception.
  It reads the raw text, strings and comments included, on purpose: a lexer of our own that
  disagreed with rustc's about where a string or comment ends could be used to hide a macro.
* :func:`defuse_comment_text` makes prose for a comment (rustdoc) pass that check.
* :class:`RustcLimits` are the resource limits of the rustc process; :func:`rustc_environment`
  its environment and :func:`limit_process` the function that applies the limits in the child.
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass

from tritonlm.errors import ConfigError, TritonLMError

# Identifiers no generated code may contain, as whole words, anywhere (in strings and comments
# too): the macros that read a file or the environment while compiling, inline assembly (an
# assembler can include files), and macro_rules (a macro could forward one of these names, or
# a `#`, into an invocation or attribute no check sees). Whole words because a `use` can rename
# a macro (`use std::include_str as f;`). Refused even where harmless (`let env = ..`,
# `std::env::var`, a string "include"); `included` or `env_var` are fine.
FORBIDDEN_IDENTIFIERS: tuple[str, ...] = (
    "include",
    "include_str",
    "include_bytes",
    "env",
    "option_env",
    "asm",
    "global_asm",
    "naked_asm",
    "macro_rules",
)

# The attributes the renderer writes itself.
ALLOWED_ATTRIBUTES: tuple[str, ...] = ("#[must_use]",)

_WORD_RUN = re.compile(r"[A-Za-z0-9_]+")
# rustc's whitespace (Pattern_White_Space) besides what str.isspace() knows
_RUST_SPACE = frozenset("\u200e\u200f")


class UnsafeSourceError(TritonLMError, ValueError):
    """A Rust source that must not reach rustc; ``problems`` says what was found where."""

    def __init__(self, message: str, *, problems: tuple[str, ...]) -> None:
        super().__init__(message)
        self.problems = problems


def _line_of(source: str, index: int) -> int:
    return source.count("\n", 0, index) + 1


def _attribute_at(source: str, index: int) -> bool:
    """Whether the ``#`` at ``index`` starts an attribute: after whitespace, the next
    character is ``[`` or ``!`` (or ``/``, a comment that could sit between the two)."""
    k = index + 1
    while k < len(source) and (source[k].isspace() or source[k] in _RUST_SPACE):
        k += 1
    return k < len(source) and source[k] in "[!/"


def source_problems(source: str) -> tuple[str, ...]:
    """What :func:`check_source` refuses in ``source``, one message per finding."""
    problems = [
        f"line {_line_of(source, m.start())}: `{m.group()}` is not allowed (not even in a string or comment)"
        for m in _WORD_RUN.finditer(source)
        if m.group() in FORBIDDEN_IDENTIFIERS
    ]
    for index in (i for i, char in enumerate(source) if char == "#"):
        if any(source.startswith(allowed, index) for allowed in ALLOWED_ATTRIBUTES):
            continue
        if _attribute_at(source, index):
            problems.append(f"line {_line_of(source, index)}: attributes (`#[..]`, `#![..]`) are not allowed")
    return tuple(problems)


_ZERO_WIDTH_SPACE = "\u200b"


def defuse_comment_text(text: str) -> str:
    """``text`` (prose for a comment) with a zero-width space inside each forbidden word and
    after each ``#`` that :func:`check_source` would take for an attribute: it reads the same
    and passes the check, which does not know comments from code."""
    text = _WORD_RUN.sub(
        lambda m: m.group()[0] + _ZERO_WIDTH_SPACE + m.group()[1:] if m.group() in FORBIDDEN_IDENTIFIERS else m.group(),
        text,
    )
    # the text may end where the next comment line starts: `#` then `\n///` is a `#/`
    hashes = [i for i, char in enumerate(text) if char == "#" and _attribute_at(text + "/", i)]
    for index in reversed(hashes):
        text = text[: index + 1] + _ZERO_WIDTH_SPACE + text[index + 1 :]
    return text


def check_source(source: str) -> None:
    """Raise :class:`UnsafeSourceError` if ``source`` must not be compiled (see the module)."""
    problems = source_problems(source)
    if problems:
        shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
        raise UnsafeSourceError(f"refused to compile the source: {shown}", problems=problems)


_MiB = 1 << 20


@dataclass(frozen=True)
class RustcLimits:
    """Resource limits of one rustc process (``setrlimit`` in the child before ``exec``).

    ``cpu_seconds``: CPU time (RLIMIT_CPU; rustc gets SIGXCPU, then SIGKILL a second later);
    ``memory_bytes``: address space (RLIMIT_AS; rustc's allocations fail past it);
    ``file_size_bytes``: the largest file it may write (RLIMIT_FSIZE);
    ``max_processes``: RLIMIT_NPROC, or None to leave it as inherited. Linux counts every
    process and thread of the user against it, not only rustc's, and does not enforce it for
    root; the default leaves room for a busy desktop and for rustc's own threads.
    No core files are written (RLIMIT_CORE 0).
    """

    cpu_seconds: int = 60
    memory_bytes: int = 2048 * _MiB
    file_size_bytes: int = 64 * _MiB
    max_processes: int | None = 4096

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "memory_bytes", "file_size_bytes", "max_processes"):
            value = getattr(self, name)
            if name == "max_processes" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"RustcLimits.{name}={value!r}: must be a positive integer")
        if self.memory_bytes < 64 * _MiB:
            raise ConfigError(f"RustcLimits.memory_bytes={self.memory_bytes}: rustc needs at least 64 MiB")

    def rlimits(self) -> tuple[tuple[int, int, int], ...]:
        """(resource, soft limit, hard limit) triples to apply."""
        limits = [
            # SIGXCPU at the soft limit, SIGKILL a second later if rustc ignores it
            (resource.RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + 1),
            (resource.RLIMIT_AS, self.memory_bytes, self.memory_bytes),
            (resource.RLIMIT_FSIZE, self.file_size_bytes, self.file_size_bytes),
            (resource.RLIMIT_CORE, 0, 0),
        ]
        if self.max_processes is not None:
            limits.append((resource.RLIMIT_NPROC, self.max_processes, self.max_processes))
        return tuple(limits)


def limit_process(limits: RustcLimits) -> Callable[[], None]:
    """A ``preexec_fn`` that lowers the child's limits to ``limits``. It never raises a limit
    above the hard limit the parent already has (that needs privileges), and calls nothing but
    ``setrlimit``/``getrlimit`` between fork and exec."""
    triples = limits.rlimits()
    infinity = resource.RLIM_INFINITY

    def apply() -> None:
        for which, soft, hard in triples:
            current = resource.getrlimit(which)[1]
            if current != infinity:
                soft, hard = min(soft, current), min(hard, current)
            resource.setrlimit(which, (soft, hard))

    return apply


# rustc needs no variable to compile a library to an rlib (no linker runs, and a rustup proxy
# is resolved beforehand: rustc.toolchain_rustc). PATH is the system default in case a
# toolchain wrapper looks for a program; HOME and TMPDIR point into the private directory, so
# nothing is read from or left in the user's.
def rustc_environment(private_dir: str) -> dict[str, str]:
    """The whole environment of a rustc run in ``private_dir``."""
    return {
        "PATH": os.defpath.lstrip(":") or "/usr/bin:/bin",
        "HOME": private_dir,
        "TMPDIR": os.path.join(private_dir, "tmp"),
    }


__all__ = [
    "ALLOWED_ATTRIBUTES",
    "FORBIDDEN_IDENTIFIERS",
    "RustcLimits",
    "UnsafeSourceError",
    "check_source",
    "defuse_comment_text",
    "limit_process",
    "rustc_environment",
    "source_problems",
]
