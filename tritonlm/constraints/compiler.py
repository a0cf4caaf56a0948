"""``GrammarCompiler``: compiles JSON schemas, regexes and choices against one tokenizer.

A compiler owns every cache its grammars share, each bounded and least-recently-used first
out: compiled grammars (by schema text and options, bounded by their bytes), compiles that
went over budget (so that repeating one fails at once), per-DFA-state token tables (bounded
by bytes, with the on-disk table cache under ``tritonlm.config.env().cache_dir``), and
tokenizer-independent byte DFAs (key literals, the any-string DFA, built-in formats). Two
compilers share nothing but the tokenizer's ``VocabIndex`` (read-only once built).

Every compile runs under a ``CompileBudget`` (time, size, cancellation; see ``budget``)
checked while it runs, the start state's token mask included. Compiles may run on several
threads at once, while other threads drive matchers of grammars already compiled: each cache
locks its own reads and writes, never a whole compile (two compiles of the same input may
both build; the last one stored wins).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from tritonlm.errors import SchemaBudgetError, SchemaError

from . import automata as am
from . import bytedfa as bd
from .budget import MAX_NESTING, CompileBudget, CompileLimits, json_depth_error
from .bytedfa import ByteDFA
from .cache import LRUCache, SizedLRUCache
from .grammar import DEFAULT_MEMO_BYTES, GrammarCore
from .leaf_tables import LeafTables
from .matcher import Grammar
from .nodes import Layout, LeafNode
from .regex import regex_nfa
from .schema import SchemaCompiler
from .tokenizer_info import TokenizerInfo, TokenizerLike

# a schema as a dict or bool, its JSON text, or a pydantic model class
SchemaInput = dict[str, Any] | bool | str | bytes | type

_MAX_FAILURES = 256  # over-budget compiles remembered


class GrammarCompiler:
    """Compiles constraints for ``tokenizer_info`` (a ``TokenizerInfo`` or a tokenizer).

    ``limits``: the budget of a compile called without one (and of later masks, see
    ``CompileLimits.max_mask_seconds``). ``cache_bytes`` bounds the compiled grammars kept by
    their ``Grammar.nbytes`` (a grammar larger than that is returned but not kept), and each
    grammar's mask memos to a quarter of it (at most 32 MiB); ``max_grammars`` bounds their
    number too. ``table_bytes`` bounds the token tables, ``max_tables`` each table cache's
    entries, ``max_dfas`` the shared byte DFAs. Compiling the same input twice returns the same
    ``Grammar`` while it is cached.
    """

    def __init__(
        self,
        tokenizer_info: TokenizerInfo | TokenizerLike,
        *,
        limits: CompileLimits | None = None,
        cache_bytes: int = 256 << 20,
        max_grammars: int = 256,
        table_bytes: int = 128 << 20,
        max_tables: int = 4096,
        max_dfas: int = 1024,
    ) -> None:
        self.info = TokenizerInfo.from_tokenizer(tokenizer_info)
        self.limits = limits if limits is not None else CompileLimits()
        if not isinstance(self.limits, CompileLimits):
            raise TypeError(f"limits must be CompileLimits, got {type(limits).__name__}")
        self._grammars: SizedLRUCache[Hashable, Grammar] = SizedLRUCache(
            cache_bytes, _grammar_nbytes, max_entries=max_grammars, dynamic=True
        )
        self._memo_bytes = min(DEFAULT_MEMO_BYTES, max(1, cache_bytes // 4))
        self._failures: LRUCache[Hashable, str] = LRUCache(_MAX_FAILURES)
        self._tables = LeafTables(self.info, max_tables, table_bytes)
        self._dfas: LRUCache[tuple[str, ...], ByteDFA] = LRUCache(max_dfas)

    def compile_json_schema(
        self,
        schema: SchemaInput,
        *,
        whitespace: str = "compact",
        indent: int = 2,
        lenient: bool = False,
        escapes: str = "canonical",
        budget: CompileBudget | None = None,
    ) -> Grammar:
        """Compile a JSON schema (dict, JSON text, or pydantic model class).

        ``whitespace``: ``"compact"`` (no whitespace, the default), ``"flexible"`` (any JSON
        whitespace between tokens, e.g. ``json.dumps`` default output) or ``"pretty"`` (exactly
        ``json.dumps(value, indent=indent)`` layout). ``lenient=True`` ignores keywords unknown
        to JSON Schema and unknown formats (known but unsupported keywords still raise).
        ``escapes``: ``"canonical"`` (the default) allows one spelling per character inside
        strings: raw UTF-8, ``\\"``, ``\\\\`` and escapes for control characters only, as
        ``json.dumps(..., ensure_ascii=False)`` writes; ``"any"`` also allows ``\\uXXXX`` for
        every character (surrogate pairs included) and ``\\/``, as ``json.dumps`` writes by
        default. ``budget``: see ``compile_regex``.

        Raises ``SchemaError`` naming the keyword and its JSON pointer (also for a schema nested
        more than ``MAX_NESTING`` levels deep), ``SchemaBudgetError`` naming the construct that
        went over budget, ``CompileCancelled`` once the budget's ``cancelled()`` is true.
        """
        budget = self._budget(budget)
        doc = _schema_dict(schema)
        too_deep = json_depth_error(doc, "schema")
        if too_deep is not None:
            raise SchemaError(too_deep)
        layout = Layout(whitespace, indent)
        key = ("json", json.dumps(doc, sort_keys=True, default=str), whitespace, indent, lenient, escapes)

        def build() -> Grammar:
            core = self._core(layout)
            compiler = SchemaCompiler(core, doc, self._dfas, lenient=lenient, escapes=escapes, budget=budget)
            try:
                root = compiler.compile(doc, "")
            except RecursionError:
                raise SchemaError(f"schema nested too deep at {compiler.pointer or '/'}") from None
            return Grammar(core, root, "JSON schema", budget=budget)

        return self._cached(key, build, budget)

    def compile_regex(self, pattern: str, *, budget: CompileBudget | None = None) -> Grammar:
        """Raw text fully matching ``pattern`` (the regex subset of ``regex``).

        ``budget``: the compile's time and size budget and its cancellation (default: a fresh
        one from the compiler's ``limits``); ``SchemaBudgetError`` over it, ``CompileCancelled``
        once cancelled. A compile that went over budget is remembered (for the same limits):
        compiling the same input again fails at once with the same error."""
        budget = self._budget(budget)

        def build() -> Grammar:
            core = self._core(Layout("compact"))
            what = "the regex pattern"
            nfa = regex_nfa(pattern, "", search=False, budget=budget, construct=what)
            dfa = am.determinize(nfa, budget=budget, construct=what)
            leaf = LeafNode(bd.string_byte_dfa(dfa, json_string=False, budget=budget, construct=what))
            alt = core.node_alt(leaf)
            return Grammar(core, alt, f"regex {pattern!r}", allow_empty=leaf.labels[leaf.dfa.start] >= 0, budget=budget)

        return self._cached(("regex", pattern), build, budget)

    def compile_choice(self, choices: Sequence[str], *, budget: CompileBudget | None = None) -> Grammar:
        """Raw text equal to one of ``choices`` (non-empty strings); ``budget`` as for
        ``compile_regex``."""
        check_choices(choices)
        budget = self._budget(budget)

        def build() -> Grammar:
            core = self._core(Layout("compact"))
            what = f"the choice among {len(choices)} strings"
            budget.charge(what, len(choices))
            alt = core.node_alt(LeafNode(bd.bytes_dfa([c.encode("utf-8") for c in choices], budget, what)))
            return Grammar(core, alt, f"choice among {len(choices)} strings", budget=budget)

        return self._cached(("choice", tuple(choices)), build, budget)

    def clear_cache(self) -> None:
        """Drop the compiled grammars and the remembered failures (token tables and shared DFAs
        are kept)."""
        self._grammars.clear()
        self._failures.clear()

    def cache_sizes(self) -> dict[str, int]:
        """What the caches hold now: ``grammars`` (entries) and ``grammar_bytes`` (their
        ``nbytes``, within ``cache_bytes``), ``tables`` and ``table_bytes`` (token tables),
        ``dfas`` (shared DFAs) and ``failures`` (over-budget compiles remembered)."""
        return {
            "grammars": len(self._grammars),
            "grammar_bytes": self._grammars.nbytes,
            "tables": len(self._tables),
            "table_bytes": self._tables.nbytes,
            "dfas": len(self._dfas),
            "failures": len(self._failures),
        }

    def _budget(self, budget: CompileBudget | None) -> CompileBudget:
        return budget if budget is not None else CompileBudget(self.limits)

    def _core(self, layout: Layout) -> GrammarCore:
        return GrammarCore(
            self.info,
            layout,
            self._tables,
            max_memo_bytes=self._memo_bytes,
            mask_seconds=self.limits.max_mask_seconds,
        )

    def _cached(self, key: Hashable, build: Callable[[], Grammar], budget: CompileBudget) -> Grammar:
        hit = self._grammars.get(key)
        if hit is not None:
            return hit
        failure_key = (key, budget.limits)
        failed = self._failures.get(failure_key)
        if failed is not None:
            raise SchemaBudgetError(failed)
        try:
            grammar = build()
            grammar.prepare(budget)
        except SchemaBudgetError as exc:
            self._failures.put(failure_key, str(exc))
            raise
        except RecursionError:
            raise SchemaError(f"nested too deep to compile (more than {MAX_NESTING} levels)") from None
        self._grammars.put(key, grammar)
        return grammar


def _grammar_nbytes(grammar: Grammar) -> int:
    return grammar.nbytes


def check_choices(choices: Sequence[str]) -> None:
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise SchemaError("choice: expected a non-empty list of non-empty strings")


def _schema_dict(schema: Any) -> Any:
    if isinstance(schema, (str, bytes)):
        try:
            return json.loads(schema)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"schema is not valid JSON: {exc}") from exc
        except RecursionError:
            raise SchemaError("schema nested too deep at / (its JSON text)") from None
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()
    if isinstance(schema, (dict, bool)):
        return schema
    raise SchemaError(
        f"schema must be a dict, a bool, a JSON string or a pydantic model class, got {type(schema).__name__}"
    )
