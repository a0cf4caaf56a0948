"""``RustGenerator``: a reference code generator on :class:`ProviderAdapter`, Rust functions
that compile.

Flow: :class:`RustFunctionSpec` -> prompt -> :data:`RUST_GENERATION_SCHEMA` -> Rust source
rendered from every part of the answer -> the source check -> rustc, sandboxed under
:class:`RustcLimits` (:mod:`.sandbox`, :mod:`.rustc`). The edits rustc suggests for its own
errors are applied as ``cargo fix`` would (optional); a failure that remains is fed back (the
previous source and the compiler's errors about it in the prompt; or why the source check
refused it) up to ``max_attempts`` rounds of ``candidates`` answers each.
"""

from __future__ import annotations

import asyncio
import shutil

from tritonlm.errors import ConfigError
from tritonlm.providers.adapter import ProviderAdapter
from tritonlm.providers.errors import StructuredOutputError
from tritonlm.providers.json_output import schema_problems
from tritonlm.providers.rust.prompt import build_prompt
from tritonlm.providers.rust.render import render_rust_source
from tritonlm.providers.rust.result import RustAttempt, RustGenerationResult
from tritonlm.providers.rust.rustc import compile_with_fixes
from tritonlm.providers.rust.sandbox import RustcLimits, UnsafeSourceError
from tritonlm.providers.rust.schema import RUST_GENERATION_SCHEMA, RustFunctionSpec


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

    Every rendered source passes the source check before rustc sees it (a remote provider's
    answer is not grammar-constrained); one it refuses is a failed attempt whose ``error`` is
    fed back. rustc runs under ``limits`` (default :class:`RustcLimits`) and
    ``compile_timeout_s`` of wall-clock time.
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
        limits: RustcLimits | None = None,
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
        if limits is not None and not isinstance(limits, RustcLimits):
            raise ConfigError(f"limits must be a RustcLimits, got {type(limits).__name__}")
        if shutil.which(rustc) is None:
            raise ConfigError(f"rustc not found: {rustc!r}")
        self.adapter = adapter
        self.max_attempts = max_attempts
        self.candidates = candidates
        self.max_fix_rounds = max_fix_rounds if compiler_fixes else 0
        self.rustc = rustc
        self.compile_timeout_s = compile_timeout_s
        self.limits = limits if limits is not None else RustcLimits()
        self.max_tokens = max_tokens
        self.temperature = temperature
        # retries may sample more freely, so a model does not repeat the answer it just gave
        self.retry_temperature = retry_temperature if retry_temperature is not None else temperature

    @staticmethod
    def build_prompt(spec: RustFunctionSpec, previous: RustAttempt | None = None) -> str:
        """The prompt of one attempt (:func:`tritonlm.providers.rust.prompt.build_prompt`)."""
        return build_prompt(spec, previous)

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
        try:
            source, result, num_fixes = await compile_with_fixes(
                generated,
                rustc=self.rustc,
                timeout_s=self.compile_timeout_s,
                max_rounds=self.max_fix_rounds,
                limits=self.limits,
            )
        except UnsafeSourceError as exc:
            return RustAttempt(
                generation=generation,
                source=None,
                compile=None,
                error=str(exc),
                round=round_index,
                generated_source=generated,
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
            previous = min(candidates, key=lambda attempt: attempt.error_count)
        return RustGenerationResult(spec=spec, attempts=tuple(attempts))


__all__ = ["RustGenerator"]
