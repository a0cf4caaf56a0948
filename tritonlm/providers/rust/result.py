"""What one generation produced: an attempt per candidate, and the result over all rounds."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tritonlm.providers.rust.rustc import CompileResult
from tritonlm.providers.rust.schema import RustFunctionSpec


@dataclass(frozen=True)
class RustAttempt:
    """One candidate of one round: a generation and its compile. ``generation`` is None when
    the model's answer did not validate against the schema (``error`` says why); ``source`` and
    ``compile`` are then None. They are None too when the source check refused the rendered
    source (``error`` says why, ``generated_source`` holds it): nothing was compiled.
    ``generated_source`` is the source rendered from the generation; ``source`` is what was
    compiled last, after ``num_fixes`` compiler-suggested edits."""

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

    @property
    def error_count(self) -> float:
        """rustc's errors in the last compile; infinite when nothing was compiled."""
        if self.compile is None:
            return float("inf")
        return len(re.findall(r"^error(?:\[\w+\])?: (?!aborting)", self.compile.stderr, flags=re.M))


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


__all__ = ["RustAttempt", "RustGenerationResult"]
