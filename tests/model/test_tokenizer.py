"""Tokenizer: streaming detokenization, chat template, special tokens, errors (real Qwen2.5 vocabulary)."""

from __future__ import annotations

import random

import pytest

from tritonlm.errors import TokenizationError
from tritonlm.model.tokenizer import IncrementalDetokenizer

MULTIBYTE = "naïve café 世界 🎉👍🏽 👨‍👩‍👧 Привет ∑√ emoji-heavy 😀😀😀 done"


def test_incremental_detokenizer_never_splits_a_character(qwen_tokenizer):
    ids = qwen_tokenizer.encode(MULTIBYTE)
    # the emoji need several byte-level tokens each: some token must end mid-character
    assert any(_is_partial(qwen_tokenizer.token_bytes[i]) for i in ids)
    detok = IncrementalDetokenizer(qwen_tokenizer)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    for d in deltas:
        assert "\ufffd" not in d
        d.encode("utf-8")  # a lone surrogate or broken character would raise
    assert "".join(deltas) == MULTIBYTE == detok.text
    assert any(d == "" for d in deltas), "a partial character must be held back"


def _is_partial(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_incremental_equals_full_decode_on_random_token_streams(qwen_tokenizer):
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(qwen_tokenizer.num_tokens) for _ in range(rng.randint(1, 40))]
        detok = IncrementalDetokenizer(qwen_tokenizer, skip_special_tokens=False)
        text = "".join(detok.push(i) for i in ids) + detok.flush()
        assert text == qwen_tokenizer.decode(ids)


def test_special_tokens(qwen_tokenizer):
    ids = qwen_tokenizer.encode("a<|im_end|>b")
    im_end = qwen_tokenizer.token_to_id("<|im_end|>")
    assert im_end == 151645 and im_end in ids and qwen_tokenizer.is_special(im_end)
    assert qwen_tokenizer.decode(ids) == "a<|im_end|>b"
    assert qwen_tokenizer.decode(ids, skip_special_tokens=True) == "ab"
    detok = IncrementalDetokenizer(qwen_tokenizer, skip_special_tokens=True)
    assert "".join(detok.push(i) for i in ids) == "ab"
    assert set(qwen_tokenizer.eos_token_ids) == {151645, 151643}
    # placeholder ids past the real vocabulary decode to nothing
    assert qwen_tokenizer.vocab_size == 151936 and qwen_tokenizer.num_tokens == 151665
    assert qwen_tokenizer.decode([151700]) == ""


def test_chat_template_renders_the_models_own_template(qwen_tokenizer):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    text = qwen_tokenizer.apply_chat_template(msgs)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    )
    default_system = qwen_tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=False)
    assert default_system.startswith("<|im_start|>system\nYou are Qwen") and default_system.endswith("x<|im_end|>\n")
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    with_tools = qwen_tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tools=tools)
    assert '"name": "add"' in with_tools and "<tools>" in with_tools


def test_errors_are_typed(qwen_tokenizer):
    with pytest.raises(TokenizationError):
        qwen_tokenizer.encode(123)  # type: ignore[arg-type]
    with pytest.raises(TokenizationError):
        qwen_tokenizer.decode([-1])
    with pytest.raises(TokenizationError):
        qwen_tokenizer.decode([10**9])
    with pytest.raises(TokenizationError):
        qwen_tokenizer.apply_chat_template("not messages")  # type: ignore[arg-type]


def test_token_bytes_cover_the_vocabulary(qwen_tokenizer):
    tb = qwen_tokenizer.token_bytes
    assert len(tb) == qwen_tokenizer.vocab_size
    assert tb[qwen_tokenizer.token_to_id("Ġhello")] == b" hello"
    assert all(len(tb[b]) == 1 for b in range(256))
    assert sorted(tb[b][0] for b in range(256)) == list(range(256))
