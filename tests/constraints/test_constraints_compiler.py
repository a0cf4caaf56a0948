"""``GrammarCompiler``: it owns its caches (bounded, per tokenizer), and the module-level
wrappers are the same thing over a default compiler."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tritonlm.constraints import (
    GrammarCompiler,
    TokenizerInfo,
    compile_choice,
    compile_json_schema,
    compile_regex,
    default_compiler,
)
from tritonlm.constraints.cache import LRUCache

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name"],
    "additionalProperties": False,
}


class Tok:
    """Single bytes plus ``merged`` tokens, then an EOS."""

    def __init__(self, merged: list[bytes]) -> None:
        self.token_bytes = [bytes([i]) for i in range(256)] + merged + [b"<eos>"]
        self.eos_token_ids = (len(self.token_bytes) - 1,)
        self.special_token_ids = frozenset(self.eos_token_ids)
        self.vocab_size = len(self.token_bytes)


@pytest.fixture(scope="module")
def tok() -> Tok:
    return Tok([b'{"', b'":', b'","', b'"}', b"name", b"age", b"12"])


@pytest.fixture(scope="module")
def other_tok() -> Tok:
    return Tok([b"na", b"me", b'"'])


def masks_along(grammar, data: bytes) -> list[np.ndarray]:
    """The mask before each byte of ``data`` and after the last one (bytes are tokens here)."""
    matcher = grammar.matcher()
    out = [matcher.next_token_mask()]
    for b in data:
        assert matcher.accept_token(b)
        out.append(matcher.next_token_mask())
    return out


def test_compiling_the_same_schema_twice_returns_the_cached_grammar(tok) -> None:
    compiler = GrammarCompiler(tok)
    first = compiler.compile_json_schema(PERSON)
    assert compiler.compile_json_schema(PERSON) is first
    assert compiler.compile_json_schema(json.dumps(PERSON)) is first  # same document, as text
    assert compiler.compile_json_schema(dict(reversed(list(PERSON.items())))) is first  # key order is irrelevant
    assert compiler.compile_json_schema(PERSON, whitespace="flexible") is not first  # options are part of the key
    assert compiler.compile_regex("[a-z]+") is compiler.compile_regex("[a-z]+")
    assert compiler.compile_choice(["x", "y"]) is compiler.compile_choice(["x", "y"])
    assert compiler.cache_sizes()["grammars"] == 4
    compiler.clear_cache()
    assert compiler.cache_sizes()["grammars"] == 0
    assert compiler.compile_json_schema(PERSON) is not first


def test_grammar_cache_is_bounded_and_evicts_least_recently_used(tok) -> None:
    compiler = GrammarCompiler(tok, max_grammars=2)
    a = compiler.compile_regex("a+")
    b = compiler.compile_regex("b+")
    assert compiler.compile_regex("a+") is a  # a is now the most recently used
    compiler.compile_regex("c+")  # evicts b
    assert compiler.cache_sizes()["grammars"] == 2
    assert compiler.compile_regex("a+") is a
    assert compiler.compile_regex("b+") is not b


def test_table_and_dfa_caches_are_bounded(tok) -> None:
    compiler = GrammarCompiler(tok, max_tables=3, max_dfas=2)
    schema = {
        "type": "object",
        "properties": {k: {"type": "string", "format": f} for k, f in [("d", "date"), ("u", "uuid"), ("e", "email")]},
    }
    grammar = compiler.compile_json_schema(schema)
    text = b'{"d":"2024-01-31","u":"123e4567-e89b-12d3-a456-426614174000","e":"a@b.c"}'
    masks_along(grammar, text)
    sizes = compiler.cache_sizes()
    assert sizes["dfas"] <= 2
    assert 0 < sizes["tables"] <= 2 * 3  # plain and counted-string tables, 3 each at most
    unbounded = GrammarCompiler(tok)
    masks_along(unbounded.compile_json_schema(schema), text)
    assert unbounded.cache_sizes()["tables"] > sizes["tables"]
    assert unbounded.cache_sizes()["dfas"] > sizes["dfas"]
    # eviction loses nothing but time: the masks are the same
    again = GrammarCompiler(tok, max_tables=3, max_dfas=2).compile_json_schema(schema)
    for m1, m2 in zip(masks_along(again, text), masks_along(unbounded.compile_json_schema(schema), text), strict=True):
        assert np.array_equal(m1, m2)


def test_lru_cache_evicts_the_least_recently_used() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    assert cache.get_or_build("d", lambda: 4) == 4 and "a" not in cache
    with pytest.raises(ValueError):
        LRUCache(0)


def test_compilers_of_different_tokenizers_share_no_state(tok, other_tok) -> None:
    one, two = GrammarCompiler(tok), GrammarCompiler(other_tok)
    assert one.info.fingerprint != two.info.fingerprint
    g1, g2 = one.compile_json_schema(PERSON), two.compile_json_schema(PERSON)
    assert g1 is not g2 and g1.info is one.info and g2.info is two.info
    assert g1.core.tables is not g2.core.tables
    before = two.cache_sizes()
    masks_along(g1, b'{"name":"ab"}')
    one.compile_regex("[0-9]+")
    assert two.cache_sizes() == before  # the other compiler's caches did not move
    one.clear_cache()
    assert two.compile_json_schema(PERSON) is g2
    # each speaks its own vocabulary: the merged '{"' token exists only in the first
    first_token = {b: i for i, b in enumerate(tok.token_bytes)}[b'{"']
    assert first_token in g1.matcher().allowed_token_ids().tolist()
    assert len(g2.matcher().next_token_mask()) == (other_tok.vocab_size + 31) // 32


def test_two_compilers_of_one_tokenizer_do_not_share_grammars(tok) -> None:
    one, two = GrammarCompiler(tok), GrammarCompiler(tok)
    assert one.info is two.info  # the same tokenizer object gives the same TokenizerInfo
    assert one.compile_json_schema(PERSON) is not two.compile_json_schema(PERSON)


def test_default_compiler_wrappers_match_an_explicit_compiler(tok) -> None:
    compiler = GrammarCompiler(TokenizerInfo.from_tokenizer(tok))
    assert default_compiler(tok) is default_compiler(TokenizerInfo.from_tokenizer(tok))
    assert compile_json_schema(PERSON, tok) is default_compiler(tok).compile_json_schema(PERSON)
    cases = [
        (compile_json_schema(PERSON, tok), compiler.compile_json_schema(PERSON), b'{"age":12,"name":"bob"}'),
        (
            compile_json_schema(PERSON, tok, whitespace="pretty"),
            compiler.compile_json_schema(PERSON, whitespace="pretty"),
            b'{\n  "name": "x"\n}',
        ),
        (compile_regex(r"\d{2}-[a-z]+", tok), compiler.compile_regex(r"\d{2}-[a-z]+"), b"12-ab"),
        (compile_choice(["yes", "no"], tok), compiler.compile_choice(["yes", "no"]), b"no"),
    ]
    for by_default, explicit, text in cases:
        assert by_default is not explicit
        for m1, m2 in zip(masks_along(by_default, text), masks_along(explicit, text), strict=True):
            assert np.array_equal(m1, m2)


def test_tokenizer_info_is_not_stashed_on_the_tokenizer() -> None:
    fresh = Tok([b"ab"])
    attrs = set(vars(fresh))
    info = TokenizerInfo.from_tokenizer(fresh)
    assert TokenizerInfo.from_tokenizer(fresh) is info
    GrammarCompiler(fresh).compile_choice(["ab"])
    assert set(vars(fresh)) == attrs
