"""Public entry points: compile a JSON schema / regex / choice against a tokenizer.

``GrammarCompiler(tokenizer_info)`` is the object to hold (one per tokenizer, e.g. one per
engine): it owns every cache. The module functions here are thin wrappers over a default
compiler per tokenizer (``default_compiler``: a bounded registry keyed by the tokenizer's
fingerprint, so callers passing the same tokenizer share one compiler and its caches).
"""

from __future__ import annotations

from collections.abc import Sequence

from .bitmask import allocate_token_bitmask
from .budget import CompileBudget
from .cache import LRUCache
from .compiler import GrammarCompiler, SchemaInput, check_choices
from .matcher import CompiledGrammar, Grammar, GrammarMatcher, Matcher
from .tokenizer_info import TokenizerInfo, TokenizerLike

__all__ = [
    "CompiledGrammar",
    "Grammar",
    "GrammarCompiler",
    "GrammarMatcher",
    "Matcher",
    "allocate_token_bitmask",
    "compile_choice",
    "compile_json_schema",
    "compile_regex",
    "default_compiler",
]

_MAX_DEFAULT_COMPILERS = 8


class _DefaultCompilers:
    """The default ``GrammarCompiler`` of each tokenizer (by fingerprint; LRU-bounded)."""

    def __init__(self, max_size: int) -> None:
        self._compilers: LRUCache[str, GrammarCompiler] = LRUCache(max_size)

    def get(self, tokenizer: TokenizerInfo | TokenizerLike) -> GrammarCompiler:
        info = TokenizerInfo.from_tokenizer(tokenizer)
        return self._compilers.get_or_build(info.fingerprint, lambda: GrammarCompiler(info))


_DEFAULTS = _DefaultCompilers(_MAX_DEFAULT_COMPILERS)


def default_compiler(tokenizer: TokenizerInfo | TokenizerLike) -> GrammarCompiler:
    """The shared compiler the module functions use for ``tokenizer``."""
    return _DEFAULTS.get(tokenizer)


def compile_json_schema(
    schema: SchemaInput,
    tokenizer: TokenizerInfo | TokenizerLike,
    *,
    whitespace: str = "compact",
    indent: int = 2,
    lenient: bool = False,
    escapes: str = "canonical",
    budget: CompileBudget | None = None,
) -> Grammar:
    """``default_compiler(tokenizer).compile_json_schema(...)`` (see ``GrammarCompiler``)."""
    return default_compiler(tokenizer).compile_json_schema(
        schema, whitespace=whitespace, indent=indent, lenient=lenient, escapes=escapes, budget=budget
    )


def compile_regex(
    pattern: str, tokenizer: TokenizerInfo | TokenizerLike, *, budget: CompileBudget | None = None
) -> Grammar:
    """Raw text fully matching ``pattern`` (the regex subset of ``regex``)."""
    return default_compiler(tokenizer).compile_regex(pattern, budget=budget)


def compile_choice(
    choices: Sequence[str], tokenizer: TokenizerInfo | TokenizerLike, *, budget: CompileBudget | None = None
) -> Grammar:
    """Raw text equal to one of ``choices``."""
    check_choices(choices)
    return default_compiler(tokenizer).compile_choice(choices, budget=budget)
