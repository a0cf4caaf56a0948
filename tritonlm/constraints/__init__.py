"""Grammar-constrained decoding: JSON schema / regex / choice to per-step token masks.

``GrammarCompiler(tokenizer_info)`` compiles and owns every cache (hold one per tokenizer);
``compile_json_schema(schema, tokenizer)``, ``compile_regex`` and ``compile_choice`` are thin
wrappers over a default compiler per tokenizer. Each gives a ``Grammar``;
``Grammar.matcher()`` a ``Matcher`` (the ``GrammarMatcher`` protocol) with
``fill_next_token_bitmask(bitmask, row)``, ``accept_token``, ``is_terminated``, ``rollback``,
``reset``, ``find_forced_tokens`` and ``find_completion_tokens``. Masks are numpy int32
arrays ``[batch, ceil(vocab/32)]`` (bit j of word w set = token 32*w + j allowed; see
``allocate_token_bitmask``). No torch import here.

Design, in short: a schema compiles to nodes (byte DFAs for strings, keys and literals; a
number node with exact bound reasoning; object/array nodes) that a matcher runs as a set of
stacks over bytes. Token masks come from per-tokenizer precomputation (a token trie and
length-sorted byte columns, cached on disk under ``tritonlm.config.env().cache_dir``) and
per-DFA-state token tables shared across the grammars of one compiler, so that a mask is
mostly a cached lookup plus a check of the few hundred tokens that leave a string part-way.

Compiles run under a ``CompileBudget`` (``CompileLimits``: time, size, and the time of a
later state's first mask), checked while they run; see ``budget``.

Modules, bottom up: ``budget``, ``charclass``, ``spelling``, ``automata`` (character automata),
``bytedfa``, ``regex``; ``tokenizer_info``, ``bitmask``, ``cache``; ``nodes``, ``numbers``,
``object_keys``; ``leaf_tables``, ``masks``, ``key_masks``, ``completion``, ``grammar``;
``schema_base``, ``schema_refs``, ``schema_oneof``, ``schema_types``, ``schema``;
``matcher``, ``compiler``, ``api``.
"""

from tritonlm.errors import CompileCancelled, SchemaBudgetError, SchemaError

from .api import (
    CompiledGrammar,
    Grammar,
    GrammarCompiler,
    GrammarMatcher,
    Matcher,
    allocate_token_bitmask,
    compile_choice,
    compile_json_schema,
    compile_regex,
    default_compiler,
)
from .budget import MAX_NESTING, CompileBudget, CompileLimits
from .tokenizer_info import TokenizerInfo, TokenizerLike

__all__ = [
    "MAX_NESTING",
    "CompileBudget",
    "CompileCancelled",
    "CompileLimits",
    "CompiledGrammar",
    "Grammar",
    "GrammarCompiler",
    "GrammarMatcher",
    "Matcher",
    "SchemaBudgetError",
    "SchemaError",
    "TokenizerInfo",
    "TokenizerLike",
    "allocate_token_bitmask",
    "compile_choice",
    "compile_json_schema",
    "compile_regex",
    "default_compiler",
]
