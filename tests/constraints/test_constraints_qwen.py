"""The engine on the real Qwen2.5 vocabulary: realistic schemas and their examples, masks
consistent with accept_token, forced tokens, EOS and special tokens."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from tests.constraints.support.schemas import SCHEMAS, SchemaCase
from tritonlm.constraints import TokenizerInfo, allocate_token_bitmask, compile_json_schema, compile_regex

SERIALIZATIONS = {
    "compact": lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False),
    "pretty": lambda v: json.dumps(v, indent=2, ensure_ascii=False),
    "flexible": json.dumps,
}


@pytest.fixture(scope="module")
def qwen_info(qwen_tokenizer) -> TokenizerInfo:
    return TokenizerInfo.from_tokenizer(qwen_tokenizer)


def mask_allows(bitmask: np.ndarray, token: int) -> bool:
    return bool((int(bitmask[0, token >> 5]) >> (token & 31)) & 1)


@pytest.mark.parametrize("case", SCHEMAS, ids=[c.name for c in SCHEMAS])
def test_schema_examples_are_valid(case: SchemaCase) -> None:
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    validator = jsonschema.Draft202012Validator(case.schema, format_checker=checker)
    for example in case.examples:
        validator.validate(example)


@pytest.mark.parametrize("whitespace", list(SERIALIZATIONS))
@pytest.mark.parametrize("case", SCHEMAS, ids=[c.name for c in SCHEMAS])
def test_examples_accepted_and_masked(qwen_tokenizer, qwen_info, case: SchemaCase, whitespace: str) -> None:
    escapes = "any" if whitespace == "flexible" else "canonical"
    grammar = compile_json_schema(case.schema, qwen_tokenizer, whitespace=whitespace, escapes=escapes)
    bitmask = allocate_token_bitmask(1, qwen_info.vocab_size)
    eos = qwen_info.eos_token_ids[0]
    specials = sorted(qwen_info.special_token_ids - set(qwen_info.eos_token_ids))
    for example in case.examples:
        matcher = grammar.matcher()
        for token in qwen_tokenizer.encode(SERIALIZATIONS[whitespace](example)):
            matcher.fill_next_token_bitmask(bitmask, 0)
            assert mask_allows(bitmask, token), qwen_info.vocab[token]
            assert not mask_allows(bitmask, eos)
            assert not any(mask_allows(bitmask, s) for s in specials)
            assert matcher.accept_token(token)
        matcher.fill_next_token_bitmask(bitmask, 0)
        assert mask_allows(bitmask, eos)
        assert matcher.accept_token(eos)
        assert matcher.is_terminated()


@pytest.mark.parametrize("case", SCHEMAS[:4], ids=[c.name for c in SCHEMAS[:4]])
def test_rollback_and_forced_tokens(qwen_tokenizer, qwen_info, case: SchemaCase) -> None:
    grammar = compile_json_schema(case.schema, qwen_tokenizer)
    tokens = qwen_tokenizer.encode(SERIALIZATIONS["compact"](case.examples[0]))
    matcher = grammar.matcher()
    states = []
    for t in tokens:
        states.append(matcher.allowed_token_ids().tolist())
        assert matcher.accept_token(t)
    matcher.rollback(len(tokens) // 2)
    assert matcher.allowed_token_ids().tolist() == states[len(tokens) - len(tokens) // 2]
    for t in tokens[len(tokens) - len(tokens) // 2 :]:
        assert matcher.accept_token(t)
    assert matcher.can_terminate()
    # jump-forward: forced tokens are accepted and spell the forced bytes
    matcher.reset()
    forced_bytes = matcher.find_forced_bytes()
    forced = matcher.find_forced_tokens()
    assert b"".join(qwen_info.vocab[t] for t in forced) == forced_bytes
    for t in forced:
        assert matcher.accept_token(t)


def test_order_schema_forces_key_prefix(qwen_tokenizer, qwen_info) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    matcher = compile_json_schema(schema, qwen_tokenizer).matcher()
    assert matcher.find_forced_bytes() == b'{"answer":"'
    assert b"".join(qwen_info.vocab[t] for t in matcher.find_forced_tokens()) == b'{"answer":"'


def test_regex_on_qwen(qwen_tokenizer, qwen_info) -> None:
    grammar = compile_regex(r"[0-9]{3}-[0-9]{4}", qwen_tokenizer)
    matcher = grammar.matcher()
    for t in qwen_tokenizer.encode("555-1234"):
        assert matcher.accept_token(t)
    assert matcher.can_terminate()
    assert not grammar.matcher().accept_token(qwen_tokenizer.encode("abc")[0])


@pytest.mark.parametrize("case", SCHEMAS, ids=lambda c: c.name)
def test_completion_tokens_finish_every_prefix_validly(qwen_tokenizer, case) -> None:
    """find_completion_tokens, from every token prefix of each example document, gives tokens
    the matcher accepts, after which it can end, and the whole text validates."""
    import json as _json

    jsonschema = pytest.importorskip("jsonschema")
    from tritonlm.constraints import compile_json_schema

    grammar = compile_json_schema(case.schema, qwen_tokenizer)
    for example in case.examples[:2]:
        ids = qwen_tokenizer.encode(
            _json.dumps(example, separators=(",", ":"), ensure_ascii=False), add_special_tokens=False
        )
        for cut in range(len(ids) + 1):
            matcher = grammar.matcher()
            assert all(matcher.accept_token(t) for t in ids[:cut])
            completion = matcher.find_completion_tokens()
            assert completion is not None, (case.name, qwen_tokenizer.decode(ids[:cut]))
            assert all(matcher.accept_token(t) for t in completion)
            assert matcher.can_terminate()
            text = qwen_tokenizer.decode(ids[:cut] + completion)
            jsonschema.validate(
                _json.loads(text), case.schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
        assert matcher.find_completion_tokens() == []


def test_rust_generation_grammar_refuses_unbalanced_bodies_token_by_token(qwen_tokenizer, qwen_info) -> None:
    """The Rust generator's schema (brace-balanced, fn-free body patterns) on the real vocabulary:
    its worked example is accepted to the end; a body closing one brace too many, or defining
    a fn, is refused at the token where it goes wrong, and the mask there agrees."""
    from tritonlm.providers.rust import EXAMPLE_GENERATION, RUST_GENERATION_SCHEMA

    grammar = compile_json_schema(RUST_GENERATION_SCHEMA, qwen_info)
    compact = SERIALIZATIONS["compact"]
    matcher = grammar.matcher()
    for token in qwen_tokenizer.encode(compact(EXAMPLE_GENERATION)):
        assert matcher.accept_token(token)
    assert matcher.accept_token(qwen_tokenizer.eos_token_ids[0]) and matcher.is_terminated()

    bitmask = allocate_token_bitmask(1, 151936)
    for body in ("match position { _ => None }}", "fn one() -> i32 { 1 }\none()"):
        tokens = qwen_tokenizer.encode(compact({**EXAMPLE_GENERATION, "implementation_body": body}))
        matcher = grammar.matcher()
        for token in tokens:
            matcher.fill_next_token_bitmask(bitmask, 0)
            accepted = matcher.accept_token(token)
            assert accepted == mask_allows(bitmask, token)
            if not accepted:
                break
        assert not accepted, body
