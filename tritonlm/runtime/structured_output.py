"""Structured output: grammars for constrained requests, their per-step token masks, jump-forward
and closing within ``max_tokens``. No torch (the logits are masked through a :class:`BitmaskApplier`,
the model runner).

Per step, for the requests that sample: :meth:`StructuredOutputManager.start_masks` fills the
bitmasks of the constrained rows on a worker thread while the model runs (matchers are only
read then); :meth:`~StructuredOutputManager.apply_masks` waits for them and masks the logits.
Failures never reach the engine as exceptions: they come back as ``{row: error}`` so the
engine fails those requests alone. After a token is appended, :meth:`forced_tokens` gives the
tokens the grammar forces next (jump-forward) and the budget methods keep a constrained output
completable within its token budget.

Grammars are compiled by :meth:`StructuredOutputManager.compile`, which is thread-safe and is
called on the engine loop's compile workers, never on the step loop: each compile runs under
the engine's :class:`~tritonlm.runtime.config.RequestLimits` (time and size budgets checked while
it runs, :class:`~tritonlm.errors.SchemaBudgetError` over them) and stops with
:class:`~tritonlm.errors.CompileCancelled` once its ``cancelled`` callback says so.

Every call into :mod:`tritonlm.constraints` is in :class:`_ConstraintsBackend`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tritonlm.errors import ConfigError
from tritonlm.model.tokenizer import Tokenizer
from tritonlm.runtime.config import RequestLimits
from tritonlm.runtime.request import Request
from tritonlm.runtime.sampling_params import SamplingParams

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from tritonlm.constraints import CompileLimits, GrammarCompiler

    Bitmask = NDArray[np.int32]  # [rows, ceil(V / 32)]; bit t of row j set = token t allowed

# A constrained output this many tokens from its budget starts closing: a sampled token whose
# shortest completion would no longer fit is replaced by the next token of the current one,
# and once the completion needs the whole budget it is appended with EOS.
CLOSING_WINDOW_TOKENS = 32


class GrammarMatcher(Protocol):
    """One request's position in its grammar (``tritonlm.constraints.Matcher``)."""

    def accept_token(self, token_id: int) -> bool: ...

    def rollback(self, num_tokens: int) -> None: ...

    def is_terminated(self) -> bool: ...

    def fill_next_token_bitmask(self, bitmask: Bitmask, row: int = 0) -> None: ...

    def find_forced_tokens(self) -> list[int]: ...

    def find_completion_tokens(self) -> list[int] | None: ...


class CompiledGrammar(Protocol):
    """A compiled grammar (``tritonlm.constraints.Grammar``): a factory of matchers."""

    def matcher(self) -> GrammarMatcher: ...


class BitmaskApplier(Protocol):
    """Masks logits in place (the model runner owns the tensors)."""

    def apply_token_bitmask(self, logits: Any, rows: list[int], bitmask: Bitmask) -> None: ...


@dataclass
class GrammarMasks:
    """The bitmasks of the constrained rows of one step (``rows`` index the sampling requests)."""

    rows: list[int]
    bitmask: Bitmask | None
    errors: dict[int, BaseException] = field(default_factory=dict)  # row -> what filling its mask raised


GrammarMasksJob = Future[GrammarMasks]  # the masks of one step, being filled on the worker


class _ConstraintsBackend:
    """The only code that calls :mod:`tritonlm.constraints`. Owns the engine's
    ``GrammarCompiler`` (its grammar caches, bounded by bytes), built at the first constrained
    request so unconstrained engines never import the constraint package. Thread-safe."""

    def __init__(self, tokenizer: Tokenizer, limits: RequestLimits) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        self._compiler: GrammarCompiler | None = None
        self._compile_limits: CompileLimits | None = None
        self._lock = threading.Lock()

    def _grammar_compiler(self) -> GrammarCompiler:
        with self._lock:
            if self._compiler is None:
                try:
                    from tritonlm.constraints import CompileLimits, GrammarCompiler
                except ImportError as exc:  # pragma: no cover - depends on the install
                    message = "constrained decoding needs tritonlm.constraints, which is not available"
                    raise ConfigError(message) from exc
                self._compile_limits = CompileLimits(
                    max_seconds=self.limits.compile_time_budget_s,
                    max_size=self.limits.compile_size_budget,
                    max_mask_seconds=self.limits.mask_time_budget_s,
                )
                self._compiler = GrammarCompiler(
                    self.tokenizer, limits=self._compile_limits, cache_bytes=self.limits.grammar_cache_bytes
                )
            return self._compiler

    def compile(self, params: SamplingParams, cancelled: Callable[[], bool] | None) -> CompiledGrammar:
        from tritonlm.constraints import CompileBudget

        compiler = self._grammar_compiler()
        budget = CompileBudget(self._compile_limits, cancelled=cancelled)
        if params.json_schema is not None:
            return compiler.compile_json_schema(params.json_schema, budget=budget)
        if params.regex is not None:
            return compiler.compile_regex(params.regex, budget=budget)
        assert params.choice is not None
        return compiler.compile_choice(list(params.choice), budget=budget)

    def allocate_bitmask(self, num_rows: int, vocab_size: int) -> Bitmask:
        from tritonlm.constraints import allocate_token_bitmask

        return allocate_token_bitmask(num_rows, vocab_size)


class StructuredOutputManager:
    """Grammars, masks, jump-forward and budget closing for the engine's constrained requests."""

    def __init__(
        self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: Sequence[int], limits: RequestLimits
    ) -> None:
        self._backend = _ConstraintsBackend(tokenizer, limits)
        self.vocab_size = vocab_size
        self._eos_token_ids = frozenset(eos_token_ids)
        self._closing_eos = eos_token_ids[0] if eos_token_ids else -1  # the EOS that closes an output
        self._pool: ThreadPoolExecutor | None = None  # fills masks during the forward

    def compile(self, params: SamplingParams, cancelled: Callable[[], bool] | None = None) -> CompiledGrammar | None:
        """The request's grammar (cached by the backend); None if unconstrained. Any thread.
        Raises :class:`~tritonlm.errors.SchemaError` for one that does not compile,
        :class:`~tritonlm.errors.SchemaBudgetError` over budget, and
        :class:`~tritonlm.errors.CompileCancelled` once ``cancelled()`` is true."""
        return self._backend.compile(params, cancelled) if params.has_constraint else None

    # ---- masks -------------------------------------------------------------------------------
    def start_masks(self, sampling: Sequence[Request]) -> GrammarMasksJob | None:
        """Start filling the bitmasks of the constrained rows of ``sampling`` on the worker."""
        rows = [i for i, r in enumerate(sampling) if r.matcher is not None]
        if not rows:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tritonlm-masks")
        matchers = [sampling[i].matcher for i in rows]
        return self._pool.submit(self._fill, rows, matchers)

    def _fill(self, rows: list[int], matchers: list[GrammarMatcher | None]) -> GrammarMasks:
        bitmask = self._backend.allocate_bitmask(len(rows), self.vocab_size)
        errors: dict[int, BaseException] = {}
        for j, matcher in enumerate(matchers):
            try:
                assert matcher is not None
                matcher.fill_next_token_bitmask(bitmask, j)
            except Exception as exc:  # fails that request alone
                errors[rows[j]] = exc
        return GrammarMasks(rows, bitmask, errors)

    @staticmethod
    def wait(job: GrammarMasksJob | None) -> None:
        """Wait for a fill whose logits will not come (the forward failed): matchers are free again."""
        if job is not None:
            job.exception()

    def apply_masks(
        self, job: GrammarMasksJob | None, logits: Any, sampling: Sequence[Request], applier: BitmaskApplier
    ) -> dict[int, BaseException]:
        """Mask the constrained rows of ``logits`` in place; returns ``{row: error}`` of the rows
        that failed (their mask, or the masking itself), in the order they failed."""
        if job is None:
            return {}
        try:
            masks = job.result()
        except Exception as exc:  # the worker itself failed: every constrained row fails
            return {i: exc for i, r in enumerate(sampling) if r.matcher is not None}
        errors = dict(masks.errors)
        if masks.bitmask is None:
            return errors
        try:
            applier.apply_token_bitmask(logits, masks.rows, masks.bitmask)
        except Exception as exc:
            for i in masks.rows:
                errors.setdefault(i, exc)
        return errors

    # ---- after a token -------------------------------------------------------------------------
    @staticmethod
    def forced_tokens(request: Request) -> list[int]:
        """The tokens the grammar forces next, appended without sampling them (jump-forward).

        They join ``token_ids`` uncomputed, so the next step runs them through the model in one
        chunk (the prefill path) before sampling again. Not for outputs with logprobs (forced
        tokens have none).
        """
        if request.matcher is None or request.params.logprobs is not None:
            return []
        return request.matcher.find_forced_tokens()

    # ---- closing within max_tokens --------------------------------------------------------------
    # Only outputs without logprobs that stop at EOS take part.
    def closes_within_budget(self, request: Request) -> bool:
        """Whether the request is near enough its budget that tokens are fitted to it."""
        params = request.params
        return (
            request.matcher is not None
            and params.logprobs is None
            and not params.ignore_eos
            and _remaining_tokens(request) <= CLOSING_WINDOW_TOKENS
        )

    def fit_token_to_budget(self, request: Request, token: int) -> int:
        """``token``, or the next token of the current completion if the output could no longer be
        completed (with EOS) within the budget after ``token``. The matcher is left as it was."""
        matcher = request.matcher
        assert matcher is not None
        current = matcher.find_completion_tokens()
        if current is None or token in self._eos_token_ids:
            return token
        if not matcher.accept_token(token):
            return token  # not allowed at all: appending it reports the violation
        after = matcher.find_completion_tokens()
        matcher.rollback(1)
        if after is not None and len(after) + 1 <= _remaining_tokens(request) - 1:
            return token
        return current[0] if current else self._closing_eos

    def closing_tokens(self, request: Request) -> list[int]:
        """The completion and EOS once they need the whole remaining budget, else ``[]``."""
        assert request.matcher is not None
        completion = request.matcher.find_completion_tokens()
        if completion is None or len(completion) + 1 < _remaining_tokens(request):
            return []
        return [*completion, self._closing_eos]


def _remaining_tokens(request: Request) -> int:
    """Tokens the request may still append, EOS included."""
    return min(request.params.max_tokens - request.num_output_tokens, request.max_total_tokens - request.num_tokens)


__all__ = [
    "CLOSING_WINDOW_TOKENS",
    "BitmaskApplier",
    "CompiledGrammar",
    "GrammarMasks",
    "GrammarMasksJob",
    "GrammarMatcher",
    "StructuredOutputManager",
]
