"""Property test: for random schemas of supported keywords, sampling under the mask with
random logits never dead-ends and always yields JSON the jsonschema validator accepts."""

from __future__ import annotations

import json
import os

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.constraints.support.strategies import schemas_with_refs
from tritonlm.constraints import TokenizerInfo, allocate_token_bitmask, compile_json_schema
from tritonlm.errors import SchemaError

MAX_STEPS = 400
MAX_EXAMPLES = int(os.environ.get("CONSTRAINTS_PROPERTY_EXAMPLES", "60"))


@pytest.fixture(scope="module")
def qwen_info(qwen_tokenizer) -> TokenizerInfo:
    return TokenizerInfo.from_tokenizer(qwen_tokenizer)


@pytest.fixture(scope="module")
def closing_bias(qwen_info: TokenizerInfo) -> np.ndarray:
    """A logit bonus for tokens that close strings/containers, so that random sampling
    finishes in a reasonable number of steps."""
    bias = np.zeros(qwen_info.vocab_size, dtype=np.float32)
    for i, t in enumerate(qwen_info.vocab):
        if any(c in t for c in b'"]}') and i not in qwen_info.special_token_ids:
            bias[i] = 2.5
    bias[list(qwen_info.eos_token_ids)] = 4.0
    return bias


def sample(grammar, info: TokenizerInfo, rng: np.random.Generator, bias: np.ndarray) -> bytes | None:
    matcher = grammar.matcher()
    bitmask = allocate_token_bitmask(1, info.vocab_size)
    out = bytearray()
    for _ in range(MAX_STEPS):
        matcher.fill_next_token_bitmask(bitmask, 0)
        allowed = np.unpackbits(bitmask[0].view(np.uint8), bitorder="little")[: info.vocab_size].astype(bool)
        assert allowed.any(), f"dead end after {bytes(out)!r}"
        logits = rng.standard_normal(info.vocab_size).astype(np.float32) * 2 + bias
        logits[~allowed] = -np.inf
        token = int(np.argmax(logits))
        assert matcher.accept_token(token), f"masked-in token {token} rejected after {bytes(out)!r}"
        if matcher.is_terminated():
            return bytes(out)
        out += info.vocab[token]
    return None


@pytest.mark.slow
@settings(
    max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    schema=schemas_with_refs(),
    seed=st.integers(0, 2**32 - 1),
    whitespace=st.sampled_from(["compact", "compact", "pretty", "flexible"]),
)
def test_sampling_under_mask_validates(qwen_info, closing_bias, schema, seed, whitespace) -> None:
    try:
        grammar = compile_json_schema(schema, qwen_info, whitespace=whitespace)
    except SchemaError as exc:
        # the only acceptable refusal for these keywords: a schema nothing satisfies
        assert "no value can satisfy" in str(exc), str(exc)
        event("unsatisfiable schema")
        return
    rng = np.random.default_rng(seed)
    text = sample(grammar, qwen_info, rng, closing_bias)
    if text is None:  # ran out of steps without a dead end; nothing to validate
        event("step budget exhausted")
        return
    event("validated")
    value = json.loads(text.decode("utf-8"))
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = [e.message for e in validator.iter_errors(value)]
    assert not errors, f"{text!r} fails {schema}: {errors}"
    if whitespace == "pretty":
        assert text.decode("utf-8") == json.dumps(value, indent=2, ensure_ascii=False) or _numbers_differ(text, value)


def _numbers_differ(text: bytes, value) -> bool:
    """Pretty layout check tolerates only number spelling (1.50 vs 1.5)."""
    return json.dumps(json.loads(text), indent=2, ensure_ascii=False) == json.dumps(value, indent=2, ensure_ascii=False)
