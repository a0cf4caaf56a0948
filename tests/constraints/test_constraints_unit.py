"""Unit tests of the constraint engine on a small synthetic byte-level vocabulary (no model
needed): API contract, bitmask layout, regex subset vs Python's re, number bounds, objects,
whitespace modes, errors."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import jsonschema
import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tritonlm.constraints import (
    Grammar,
    TokenizerInfo,
    allocate_token_bitmask,
    compile_choice,
    compile_json_schema,
    compile_regex,
)
from tritonlm.constraints.tokenizer_info import VocabIndex
from tritonlm.errors import SchemaError

MERGED = [b'{"', b'":', b'","', b'"}', b"true", b"12", b'"a', b"ab", b", ", b": ", b"\n  ", b"name"]
EOS = 256 + len(MERGED)
SPECIAL = EOS + 1


class FakeTokenizer:
    """Single bytes, a few merged tokens, an EOS and another special token; logits wider
    than the vocabulary."""

    def __init__(self) -> None:
        self.token_bytes = [bytes([i]) for i in range(256)] + MERGED + [b"<|eos|>", b"<|special|>"]
        self.eos_token_ids = (EOS,)
        self.special_token_ids = frozenset({EOS, SPECIAL})
        self.vocab_size = len(self.token_bytes) + 7


@pytest.fixture(scope="module")
def tok() -> FakeTokenizer:
    return FakeTokenizer()


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def accepts(grammar: Grammar, text: str) -> bool:
    m = grammar.matcher()
    return all(m.accept_token(t) for t in encode(text)) and m.accept_token(EOS)


def allowed(matcher) -> set[int]:
    return set(matcher.allowed_token_ids().tolist())


# -- API contract -----------------------------------------------------------------------
def test_bitmask_layout(tok) -> None:
    bm = allocate_token_bitmask(3, tok.vocab_size)
    assert bm.dtype == np.int32 and bm.shape == (3, (tok.vocab_size + 31) // 32)
    grammar = compile_choice(["A"], tok)
    m = grammar.matcher()
    m.fill_next_token_bitmask(bm, 1)
    bits = np.unpackbits(bm[1].view(np.uint8), bitorder="little")
    assert np.nonzero(bits)[0].tolist() == [ord("A")]
    assert (bm[0] == -1).all() and (bm[2] == -1).all()
    assert m.accept_token(ord("A"))
    m.fill_next_token_bitmask(bm, 2)
    word, bit = divmod(EOS, 32)
    assert bm[2, word] == np.int32(np.uint32(1 << bit).view(np.int32))
    assert np.count_nonzero(bm[2]) == 1


def test_tokenizer_info_duck_typing(tok) -> None:
    info = TokenizerInfo.from_tokenizer(tok)
    assert TokenizerInfo.from_tokenizer(info) is info
    assert TokenizerInfo.from_tokenizer(tok) is info  # cached on the tokenizer object
    assert len(info.vocab) == tok.vocab_size and info.vocab[-1] == b""
    with pytest.raises(TypeError):
        TokenizerInfo.from_tokenizer(object())


def test_index_cached_on_disk(tok, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRITONLM_CACHE_DIR", str(tmp_path))
    info = TokenizerInfo(list(tok.token_bytes), tok.eos_token_ids, tok.vocab_size, tok.special_token_ids)
    path = VocabIndex.cache_path(info)
    assert not path.exists()
    built = info.index
    assert path.exists() and str(path).startswith(str(tmp_path))
    loaded = VocabIndex.load_or_build(info)
    assert loaded.tok_ids == built.tok_ids and loaded.child_node == built.child_node


def test_eos_and_specials(tok) -> None:
    grammar = compile_json_schema({"type": "boolean"}, tok)
    m = grammar.matcher()
    assert EOS not in allowed(m) and SPECIAL not in allowed(m)
    assert not m.accept_token(EOS) and not m.accept_token(SPECIAL)
    for t in encode("true"):
        assert EOS not in allowed(m)
        assert m.accept_token(t)
    assert allowed(m) == {EOS}
    assert m.can_terminate() and not m.is_terminated()
    assert m.accept_token(EOS) and m.is_terminated()
    assert not m.accept_token(ord("x"))
    m.rollback(1)
    assert not m.is_terminated() and allowed(m) == {EOS}
    m.rollback(4)
    assert allowed(m) == allowed(grammar.matcher())
    with pytest.raises(ValueError):
        m.rollback(1)
    assert not grammar.matcher().accept_token(tok.vocab_size - 1)  # padding id, no text


def test_rejected_token_changes_nothing(tok) -> None:
    m = compile_json_schema({"type": "integer"}, tok).matcher()
    assert m.accept_token(ord("1"))
    before = allowed(m)
    assert not m.accept_token(ord("x"))
    assert allowed(m) == before


MASK_CASES = [
    (
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["name"],
            "additionalProperties": False,
        },
        '{"name":"ab","n":12}',
    ),
    (
        {"type": "object", "properties": {"name": {"type": "string", "minLength": 2, "maxLength": 3}}},
        '{"name":"abc","x":"a"}',
    ),
    ({"type": "array", "items": {"type": "number", "minimum": 1, "exclusiveMaximum": 13}}, "[12,1.5]"),
    (
        {"type": "object", "patternProperties": {"^a": {"type": "boolean"}}, "additionalProperties": {"type": "null"}},
        '{"ab":true,"name":null}',
    ),
    ({"enum": ["ab", "name", {"a": [1]}]}, '"name"'),
]


@pytest.mark.parametrize(("schema", "text"), MASK_CASES)
def test_mask_matches_accept_token(tok, schema, text) -> None:
    grammar = compile_json_schema(schema, tok)
    m = grammar.matcher()
    for t in [*encode(text), EOS]:
        ids = allowed(m)
        for cand in range(tok.vocab_size):
            probe = grammar.matcher()
            probe._history = list(m._history)
            assert probe.accept_token(cand) == (cand in ids), cand
        assert m.accept_token(t)
    assert m.is_terminated()


def test_forced_tokens(tok) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"const": "ab"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    m = compile_json_schema(schema, tok).matcher()
    assert m.find_forced_bytes() == b'{"name":"ab"}'
    forced = m.find_forced_tokens()
    assert b"".join(tok.token_bytes[t] for t in forced) == b'{"name":"ab"}'
    assert forced[0] == 256  # the longest match '{"'
    for t in forced:
        assert m.accept_token(t)
    assert m.find_forced_tokens() == [] and m.can_terminate()


def test_schema_inputs(tok) -> None:
    class Point(pydantic.BaseModel):
        x: int
        label: str = "p"

    g = compile_json_schema(Point, tok)
    assert accepts(g, '{"x":3}') and accepts(g, '{"label":"q","x":-1}') and not accepts(g, '{"label":"q"}')
    g2 = compile_json_schema('{"type": "array", "items": {"type": "null"}}', tok)
    assert accepts(g2, "[null,null]") and not accepts(g2, "[1]")
    with pytest.raises(SchemaError):
        compile_json_schema("{not json", tok)


# -- errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schema", "keyword", "pointer"),
    [
        ({"properties": {"x": {"type": "integer", "multipleOf": 3}}}, "multipleOf", "/properties/x"),
        ({"type": "array", "items": {"uniqueItems": True}}, "uniqueItems", "/items/uniqueItems"),
        ({"items": [{"if": {}}]}, "if", "/items/0"),
        ({"minLenght": 3}, "minLenght", "/"),
        ({"type": "string", "format": "hostname"}, "format", "/format"),
        ({"type": "string", "pattern": "(?=a)b"}, "pattern", "/pattern"),
        ({"$ref": "http://example.com/s.json"}, "$ref", "/$ref"),
        ({"oneOf": [{"type": "integer"}, {"minimum": 2}]}, "oneOf", "/oneOf"),
        (False, "no value", ""),
    ],
)
def test_schema_errors_name_keyword_and_pointer(tok, schema, keyword, pointer) -> None:
    with pytest.raises(SchemaError) as info:
        compile_json_schema(schema, tok)
    assert keyword in str(info.value) and pointer in str(info.value)


def test_lenient_ignores_unknown_keywords_only(tok) -> None:
    g = compile_json_schema({"type": "string", "x-internal": 1, "format": "hostname"}, tok, lenient=True)
    assert accepts(g, '"a"')
    with pytest.raises(SchemaError, match="multipleOf"):
        compile_json_schema({"multipleOf": 2}, tok, lenient=True)
    annotated = {"type": "integer", "title": "T", "description": "d", "examples": [1], "default": 0}
    assert accepts(compile_json_schema(annotated, tok), "5")


# -- objects -----------------------------------------------------------------------------
def test_properties_any_order_each_once(tok) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}},
        "required": ["b"],
        "additionalProperties": {"type": "null"},
    }
    g = compile_json_schema(schema, tok)
    for text in ['{"b":true}', '{"a":1,"b":false}', '{"b":false,"a":1}', '{"z":null,"b":true,"a":2}']:
        assert accepts(g, text), text
    for text in ["{}", '{"a":1}', '{"b":true,"b":true}', '{"b":true,"z":1}', '{"b":true,"a":null}']:
        assert not accepts(g, text), text


def test_pattern_properties(tok) -> None:
    schema = {
        "type": "object",
        "patternProperties": {"^x_": {"type": "integer"}, "y$": {"type": "string"}},
        "additionalProperties": False,
    }
    g = compile_json_schema(schema, tok)
    assert accepts(g, '{"x_1":1,"ay":"s"}')
    assert not accepts(g, '{"x_1":"s"}') and not accepts(g, '{"q":1}')
    assert not accepts(g, '{"x_y":1}') and not accepts(g, '{"x_y":"s"}')  # both patterns apply


@pytest.mark.parametrize("mode", ["compact", "pretty", "flexible"])
def test_whitespace_modes(tok, mode) -> None:
    schema = {
        "type": "object",
        "properties": {"k": {"type": "array", "items": {"type": "integer"}}, "e": {"type": "object"}},
    }
    g = compile_json_schema(schema, tok, whitespace=mode)
    value = {"k": [1, 2], "e": {}}
    compact = json.dumps(value, separators=(",", ":"))
    pretty = json.dumps(value, indent=2)
    assert accepts(g, compact) == (mode != "pretty")
    assert accepts(g, pretty) == (mode != "compact")
    assert accepts(g, json.dumps(value)) == (mode == "flexible")
    if mode == "pretty":
        assert accepts(g, json.dumps({"k": [], "e": {"q": [[]]}}, indent=2))
        assert not accepts(g, json.dumps(value, indent=4))


def test_string_escapes(tok) -> None:
    g_canon = compile_json_schema({"type": "string", "maxLength": 2}, tok)
    g_any = compile_json_schema({"type": "string", "maxLength": 2}, tok, escapes="any")
    for value in ["é", '\n"', "\u0001", "💩"]:
        assert accepts(g_canon, json.dumps(value, ensure_ascii=False)), value
        assert accepts(g_any, json.dumps(value)), value
    assert not accepts(g_canon, '"\\u00e9"') and not accepts(g_canon, '"\\/"')
    assert not accepts(g_any, json.dumps("💩💩💩", ensure_ascii=False))
    assert not accepts(g_canon, '"\n"')  # raw control characters are never allowed


# -- numbers -----------------------------------------------------------------------------
NUMBER_TEXTS = [
    "0",
    "-0",
    "1",
    "-1",
    "7",
    "10",
    "1.0",
    "1.5",
    "-2.50",
    "0.25",
    "99",
    "100",
    "150",
    "1e2",
    "12.0",
    "-0.5",
    "3.14159",
    "149.999",
    "01",
    "1.",
    ".5",
    "-",
    "2e",
    "1.00",
]


@settings(max_examples=60, deadline=None)
@given(
    integer=st.booleans(),
    lo=st.none() | st.integers(-20, 120) | st.sampled_from([0.5, -1.5, 1.1]),
    hi=st.none() | st.integers(-5, 160) | st.sampled_from([99.5, 2.25]),
    lo_x=st.booleans(),
    hi_x=st.booleans(),
)
def test_number_bounds_match_validator(tok, integer, lo, hi, lo_x, hi_x) -> None:
    schema: dict = {"type": "integer" if integer else "number"}
    if lo is not None:
        schema["exclusiveMinimum" if lo_x else "minimum"] = lo
    if hi is not None:
        schema["exclusiveMaximum" if hi_x else "maximum"] = hi
    try:
        g = compile_json_schema(schema, tok)
    except SchemaError:
        lo_f, hi_f = Fraction(str(lo)), Fraction(str(hi))
        assert (
            lo is not None
            and hi is not None
            and (
                lo_f > hi_f
                or (lo_f == hi_f and (lo_x or hi_x))
                or (integer and not any(lo_f <= k <= hi_f for k in range(-30, 200)))
            )
        )
        return
    for text in NUMBER_TEXTS:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        expected = value is not None and jsonschema.Draft202012Validator(schema).is_valid(value) and "e" not in text
        if "e" in text and value is not None and lo is None and hi is None and not integer:
            expected = True
        assert accepts(g, text) == expected, (schema, text)


# -- regex ---------------------------------------------------------------------------------
REGEXES = [
    r"[a-c]+x?",
    r"(ab|b)*c",
    r"\d{2,3}",
    r"[^a]b.",
    r"a|bc|",
    r"(?:x[yz]){1,2}",
    r"\w+@\w\.\w{2}",
    r"\\\.[\]-]",
    r"[a-c\d]{0,2}\s?",
]


@settings(max_examples=150, deadline=None)
@given(pattern=st.sampled_from(REGEXES), text=st.text(alphabet="abcxyz019@.\\]- é\n", max_size=7))
def test_regex_matches_python_re(tok, pattern, text) -> None:
    grammar = compile_regex(pattern, tok)
    m = grammar.matcher()
    ok = m.accept_bytes(text.encode("utf-8")) and m.can_terminate()
    expected = re.fullmatch(pattern, text, flags=re.ASCII) is not None
    assert ok == expected, (pattern, text)


def test_pattern_is_a_search(tok) -> None:
    g = compile_json_schema({"type": "string", "pattern": "b+"}, tok)
    assert accepts(g, '"abbc"') and not accepts(g, '"ac"')
    g = compile_json_schema({"type": "string", "pattern": "^a.c$"}, tok)
    assert accepts(g, '"abc"') and not accepts(g, '"abcd"') and not accepts(g, '"a\\nc"')


def test_choice(tok) -> None:
    g = compile_choice(["yes", "no", "not sure"], tok)
    assert accepts(g, "yes") and accepts(g, "not sure") and not accepts(g, "n") and not accepts(g, "yess")
    m = g.matcher()
    assert m.accept_token(ord("n")) and m.accept_token(ord("o"))
    assert allowed(m) == {EOS, ord("t")}


# -- combinators / refs ----------------------------------------------------------------------
def test_recursive_ref_and_definitions(tok) -> None:
    schema = {
        "definitions": {
            "list": {
                "anyOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "properties": {"head": {"type": "integer"}, "tail": {"$ref": "#/definitions/list"}},
                        "required": ["head", "tail"],
                        "additionalProperties": False,
                    },
                ]
            }
        },
        "$ref": "#/definitions/list",
    }
    g = compile_json_schema(schema, tok)
    assert accepts(g, '{"head":1,"tail":{"tail":null,"head":2}}') and accepts(g, "null")
    assert not accepts(g, '{"head":1}')


def test_allof_merge_and_oneof_exclusive(tok) -> None:
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}, "required": ["a"]},
            {"properties": {"a": {"maximum": 5}, "b": {"type": "string"}}, "additionalProperties": False},
        ]
    }
    g = compile_json_schema(schema, tok)
    assert accepts(g, '{"a":3}') and accepts(g, '{"b":"x","a":0}')
    assert not accepts(g, '{"a":6}') and not accepts(g, '{"a":1,"c":1}') and not accepts(g, '{"b":"x"}')
    g = compile_json_schema({"oneOf": [{"type": "string"}, {"type": "integer"}, {"enum": [True]}]}, tok)
    assert accepts(g, '"s"') and accepts(g, "3") and accepts(g, "true") and not accepts(g, "false")


def test_enum_const_semantics(tok) -> None:
    g = compile_json_schema({"enum": [1, "a", None, [1, {"k": False}]]}, tok)
    for text in ["1", "1.0", '"a"', "null", '[1,{"k":false}]', '[1.0,{"k":false}]']:
        assert accepts(g, text), text
    for text in ["true", "2", '"b"', '[1,{"k":0}]', "[1]"]:
        assert not accepts(g, text), text
    g = compile_json_schema({"type": "string", "enum": ["ab", "abc", 1], "maxLength": 2}, tok)
    assert accepts(g, '"ab"') and not accepts(g, '"abc"') and not accepts(g, "1")


def test_no_torch_or_runtime_imports() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tritonlm.constraints; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('tritonlm.model', 'tritonlm.runtime'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
