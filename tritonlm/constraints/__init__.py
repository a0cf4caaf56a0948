"""Grammar-constrained decoding: JSON schema / regex / choice to per-step token masks.

``compile_json_schema(schema, tokenizer)``, ``compile_regex`` and ``compile_choice`` give a
``Grammar``; ``Grammar.matcher()`` a ``Matcher`` with ``fill_next_token_bitmask(bitmask,
row)``, ``accept_token``, ``is_terminated``, ``rollback``, ``reset`` and
``find_forced_tokens``. Masks are numpy int32 arrays ``[batch, ceil(vocab/32)]`` (bit j of
word w set = token 32*w + j allowed; see ``allocate_token_bitmask``). No torch import here.

Design, in short: a schema compiles to nodes (byte DFAs for strings, keys and literals; a
number node with exact bound reasoning; object/array nodes) that a matcher runs as a set of
stacks over bytes. Token masks come from per-tokenizer precomputation (a token trie and
length-sorted byte columns, cached on disk under ``tritonlm.config.env().cache_dir``) and
per-DFA-state token tables shared across grammars, so that a mask is mostly a cached
lookup plus a check of the few hundred tokens that leave a string part-way.
"""

from tritonlm.errors import SchemaError

from .api import Grammar, Matcher, allocate_token_bitmask, compile_choice, compile_json_schema, compile_regex
from .tokenizer_info import TokenizerInfo

__all__ = [
    "Grammar",
    "Matcher",
    "SchemaError",
    "TokenizerInfo",
    "allocate_token_bitmask",
    "compile_choice",
    "compile_json_schema",
    "compile_regex",
]
