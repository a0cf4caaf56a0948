"""Property test: for random schemas of supported keywords, sampling under the mask with
random logits never dead-ends and always yields JSON the jsonschema validator accepts."""

from __future__ import annotations

import json
import os

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
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


def layout(text: str) -> str:
    """``text`` with every number outside a string replaced by ``#``: the whitespace, punctuation
    and strings stay exactly as written, so two documents of the same layout that spell a number
    differently (1.50 and 1.5, 1e2 and 100.0) compare equal and nothing else does."""
    out: list[str] = []
    in_string = escaped = False
    i = 0
    while i < len(text):
        c = text[i]
        if in_string:
            out.append(c)
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
            i += 1
        elif c == '"':
            in_string = True
            out.append(c)
            i += 1
        elif c in "-0123456789":
            while i < len(text) and text[i] in "+-0123456789.eE":
                i += 1
            out.append("#")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def test_layout_ignores_number_spelling_and_nothing_else() -> None:
    pretty = json.dumps({"a": [1.5, "x 1.50"], "b": {"c": -2}}, indent=2)
    assert layout(pretty) == layout(pretty.replace("1.5,", "1.50,").replace("-2", "-2.0e0"))
    assert layout(pretty) != layout(json.dumps({"a": [1.5, "x 1.50"], "b": {"c": -2}}))  # compact
    assert layout(pretty) != layout(pretty.replace('"x 1.50"', '"x 1.5"'))  # inside a string
    assert layout(pretty) != layout(pretty.replace("  ", "   ", 1))  # one more space


# Hypothesis draws the examples; the test counts how each ended, so it can require that most were
# checked (a sampler that ran out of steps on every example would otherwise pass having checked none).
MIN_VALIDATED_SHARE = 0.5


@pytest.mark.slow
def test_sampling_under_mask_validates(qwen_info, closing_bias) -> None:
    outcomes: list[str] = []

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        schema=schemas_with_refs(),
        seed=st.integers(0, 2**32 - 1),
        whitespace=st.sampled_from(["compact", "compact", "pretty", "flexible"]),
    )
    def check(schema, seed, whitespace) -> None:
        try:
            grammar = compile_json_schema(schema, qwen_info, whitespace=whitespace)
        except SchemaError as exc:
            # the only acceptable refusal for these keywords: a schema nothing satisfies
            assert "no value can satisfy" in str(exc), str(exc)
            outcomes.append("unsatisfiable")
            return
        rng = np.random.default_rng(seed)
        text = sample(grammar, qwen_info, rng, closing_bias)
        if text is None:  # ran out of steps without a dead end; nothing to validate
            outcomes.append("step budget exhausted")
            return
        value = json.loads(text.decode("utf-8"))
        validator = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        errors = [e.message for e in validator.iter_errors(value)]
        assert not errors, f"{text!r} fails {schema}: {errors}"
        if whitespace == "pretty":
            expected = json.dumps(value, indent=2, ensure_ascii=False)
            assert layout(text.decode("utf-8")) == layout(expected), (text, expected)
        outcomes.append("validated")

    check()
    counts = {k: outcomes.count(k) for k in sorted(set(outcomes))}
    print(f"property examples: {counts}")
    sampled = len(outcomes) - counts.get("unsatisfiable", 0)
    assert sampled and counts.get("validated", 0) >= MIN_VALIDATED_SHARE * sampled, counts
