"""``GrammarCompiler``: compiles JSON schemas, regexes and choices against one tokenizer.

A compiler owns every cache its grammars share, each bounded and least-recently-used first
out: compiled grammars (by schema text and options), per-DFA-state token tables (with the
on-disk table cache under ``tritonlm.config.env().cache_dir``), and tokenizer-independent
byte DFAs (key literals, the any-string DFA, built-in formats). Two compilers share nothing
but the tokenizer's ``VocabIndex`` (read-only once built). Compiling is safe while another
thread fills masks of already compiled grammars (the caches lock); one grammar's matchers
must be driven from one thread at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from tritonlm.errors import SchemaError

from . import automata as am
from . import bytedfa as bd
from .bytedfa import ByteDFA
from .cache import LRUCache
from .grammar import GrammarCore
from .leaf_tables import LeafTables
from .matcher import Grammar
from .nodes import Layout, LeafNode
from .regex import regex_nfa
from .schema import SchemaCompiler
from .tokenizer_info import TokenizerInfo, TokenizerLike

# a schema as a dict or bool, its JSON text, or a pydantic model class
SchemaInput = dict[str, Any] | bool | str | bytes | type


class GrammarCompiler:
    """Compiles constraints for ``tokenizer_info`` (a ``TokenizerInfo`` or a tokenizer).

    ``max_grammars`` bounds the compiled grammars kept, ``max_tables`` each token-table
    cache, ``max_dfas`` the shared byte DFAs. Compiling the same input twice returns the
    same ``Grammar`` while it is cached.
    """

    def __init__(
        self,
        tokenizer_info: TokenizerInfo | TokenizerLike,
        *,
        max_grammars: int = 64,
        max_tables: int = 4096,
        max_dfas: int = 1024,
    ) -> None:
        self.info = TokenizerInfo.from_tokenizer(tokenizer_info)
        self._grammars: LRUCache[Hashable, Grammar] = LRUCache(max_grammars)
        self._tables = LeafTables(self.info, max_tables)
        self._dfas: LRUCache[tuple[str, ...], ByteDFA] = LRUCache(max_dfas)

    def compile_json_schema(
        self,
        schema: SchemaInput,
        *,
        whitespace: str = "compact",
        indent: int = 2,
        lenient: bool = False,
        escapes: str = "canonical",
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
        default. Raises ``SchemaError`` naming the keyword and its JSON pointer.
        """
        doc = _schema_dict(schema)
        layout = Layout(whitespace, indent)
        key = ("json", json.dumps(doc, sort_keys=True, default=str), whitespace, indent, lenient, escapes)

        def build() -> Grammar:
            core = self._core(layout)
            root = SchemaCompiler(core, doc, self._dfas, lenient=lenient, escapes=escapes).compile(doc, "")
            return Grammar(core, root, "JSON schema")

        return self._cached(key, build)

    def compile_regex(self, pattern: str) -> Grammar:
        """Raw text fully matching ``pattern`` (the regex subset of ``regex``)."""

        def build() -> Grammar:
            core = self._core(Layout("compact"))
            dfa = am.determinize(regex_nfa(pattern, "", search=False))
            leaf = LeafNode(bd.string_byte_dfa(dfa, json_string=False))
            alt = core.node_alt(leaf)
            return Grammar(core, alt, f"regex {pattern!r}", allow_empty=leaf.labels[leaf.dfa.start] >= 0)

        return self._cached(("regex", pattern), build)

    def compile_choice(self, choices: Sequence[str]) -> Grammar:
        """Raw text equal to one of ``choices`` (non-empty strings)."""
        check_choices(choices)

        def build() -> Grammar:
            core = self._core(Layout("compact"))
            alt = core.node_alt(LeafNode(bd.bytes_dfa([c.encode("utf-8") for c in choices])))
            return Grammar(core, alt, f"choice among {len(choices)} strings")

        return self._cached(("choice", tuple(choices)), build)

    def clear_cache(self) -> None:
        """Drop the compiled grammars (token tables and shared DFAs are kept)."""
        self._grammars.clear()

    def cache_sizes(self) -> dict[str, int]:
        """Entries held now: ``grammars``, ``tables`` (token tables), ``dfas`` (shared DFAs)."""
        return {"grammars": len(self._grammars), "tables": len(self._tables), "dfas": len(self._dfas)}

    def _core(self, layout: Layout) -> GrammarCore:
        return GrammarCore(self.info, layout, self._tables)

    def _cached(self, key: Hashable, build: Callable[[], Grammar]) -> Grammar:
        return self._grammars.get_or_build(key, build)


def check_choices(choices: Sequence[str]) -> None:
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise SchemaError("choice: expected a non-empty list of non-empty strings")


def _schema_dict(schema: Any) -> Any:
    if isinstance(schema, (str, bytes)):
        try:
            return json.loads(schema)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"schema is not valid JSON: {exc}") from exc
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()
    if isinstance(schema, (dict, bool)):
        return schema
    raise SchemaError(
        f"schema must be a dict, a bool, a JSON string or a pydantic model class, got {type(schema).__name__}"
    )
