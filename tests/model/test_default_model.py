"""The real default model (Qwen2.5-Coder-0.5B-Instruct GGUF) against HF transformers loading the same GGUF."""

from __future__ import annotations

import hashlib
import random
import unicodedata

import pytest
import torch

from tests.memreport import return_free_memory
from tests.model.simple import greedy_tokens

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

CHAT_PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain in two sentences why the sky is blue.",
    "Write a Rust function that reverses a string.",
    "What is the capital of France, and what is it famous for?",
    "Write a SQL query that counts the users per country in a table `users(id, country)`.",
]


def _digest(tensor: torch.Tensor) -> tuple[str, tuple[int, ...], str]:
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    return str(tensor.dtype), tuple(tensor.shape), hashlib.sha256(memoryview(raw)).hexdigest()


def _hf_reference(gguf_path, dtype: torch.dtype, tok, new_tokens: int, with_digests: bool = False) -> dict:
    """HF transformers on the same GGUF in ``dtype``: greedy tokens per chat prompt (and, with
    ``with_digests``, each weight's digest); the model is freed before this returns."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=dtype
    ).eval()
    out: dict = {}
    if with_digests:
        out["digests"] = {name: _digest(tensor) for name, tensor in model.state_dict().items()}
    eos = tok.eos_token_ids
    out["greedy"] = [
        _until_eos(
            _hf_greedy(model, tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])), new_tokens, eos),
            eos,
        )
        for p in CHAT_PROMPTS
    ]
    del model
    return_free_memory()
    return out


@pytest.fixture(scope="module")
def hf_f32_reference(default_gguf_path, qwen_tokenizer) -> dict:
    """What the float32 tests compare with, from HF transformers loading the same GGUF: every
    weight's dtype, shape and sha256 of its bytes (equal digests: bitwise equal tensors) and the
    first 48 greedy tokens per chat prompt. The HF model is freed before the tests load ours, so
    both are never resident together."""
    return _hf_reference(default_gguf_path, torch.float32, qwen_tokenizer, 48, with_digests=True)


@pytest.fixture(scope="module")
def hf_gguf_tokenizer(default_gguf_path):
    return transformers.AutoTokenizer.from_pretrained(str(default_gguf_path.parent), gguf_file=default_gguf_path.name)


def _hf_greedy(model, ids: list[int], n: int, eos: tuple[int, ...]) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=list(eos), pad_token_id=eos[0]
        )
    return out[0, len(ids) :].tolist()


def _until_eos(tokens: list[int], eos: tuple[int, ...]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def test_weights_equal_hf_dequantization(hf_f32_reference, default_model_f32):
    ours = default_model_f32.model.state_dict()
    theirs = hf_f32_reference["digests"]
    assert ours and set(ours) <= set(theirs)
    for name, tensor in ours.items():
        assert _digest(tensor) == theirs[name], name


def test_float32_greedy_48_tokens_identical_to_hf(hf_f32_reference, default_model_f32):
    tok = default_model_f32.tokenizer
    eos = tok.eos_token_ids
    for prompt, ref in zip(CHAT_PROMPTS, hf_f32_reference["greedy"], strict=True):
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}]))
        ours = list(greedy_tokens(default_model_f32.model, ids, 48, stop_ids=eos))
        assert ours == ref, (prompt, tok.decode(ours), tok.decode(ref))
        assert len(ours) == 48 or ours[-1] in eos


@pytest.fixture(scope="module")
def hf_bf16_greedy(default_gguf_path, qwen_tokenizer) -> list[list[int]]:
    """HF transformers' first 16 greedy tokens per chat prompt in bfloat16 (the GGUF loaded as
    bfloat16: its float32 dequantization rounded, as ``.to(torch.bfloat16)`` does). Computed and
    the HF model freed before the test loads ours, so both are never resident together."""
    return _hf_reference(default_gguf_path, torch.bfloat16, qwen_tokenizer, 16)["greedy"]


def test_bfloat16_first_16_tokens_match_hf_on_4_of_5(hf_bf16_greedy, default_model):
    tok = default_model.tokenizer
    eos = tok.eos_token_ids
    same = 0
    for prompt, ref in zip(CHAT_PROMPTS, hf_bf16_greedy, strict=True):
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}]))
        ours = list(greedy_tokens(default_model.model, ids, 16, stop_ids=eos))
        same += ours == ref
    print(f"bfloat16: {same}/5 prompts gave HF's first 16 greedy tokens")
    assert same >= 4, f"only {same}/5 prompts matched HF bfloat16"


def tokenizer_corpus(count: int = 240, seed: int = 1234) -> list[str]:
    fixed = [
        "",
        " ",
        "  ",
        "\n",
        "\n\n\n",
        "\t\t x",
        "hello",
        "Hello, world!",
        "  leading and trailing  ",
        "def f(x):\n    return x ** 2\n",
        "for (int i = 0; i < n; ++i) { a[i] += 1; }",
        'fn main() {\n    println!("{}", 42);\n}',
        "SELECT id, name FROM users WHERE age >= 18;",
        "中文测试：你好，世界！",
        "日本語のテキストです。",
        "한국어 문장입니다.",
        "emoji 🎉🚀👍🏽 and 👨‍👩‍👧‍👦",
        "1234567890",
        "3.14159 2.71828 -42 1e10 0x1F",
        "don't won't I'm you're they'll we've she'd",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>",
        "text<|im_end|>more",
        '<tool_call>{"name": "f"}</tool_call>',
        "    indented\n\tTabbed\r\nCRLF line\r\n",
        "αβγ δεζ ηθι",
        "Ünïcödé ñ ç ø å",
        "a\u00a0non-breaking\u2003space",
        "zero\u200bwidth",
        '{"key": [1, 2, {"nested": null}], "b": true}',
        "https://example.com/path?q=1&r=2#frag",
        "user@example.com",
        "$$ \\frac{a}{b} $$",
        "ﬁ ligature",
        "x" * 300,
        " " * 17 + "end",
        "\n" * 5 + "x",
        "!!!???...,,,;;;",
        "CamelCaseIdentifierWithNumbers123",
        "snake_case_name_2",
    ]
    fragments = [
        "def ",
        "class Foo:",
        "return",
        " = ",
        "(",
        ")",
        "{",
        "}",
        "[",
        "]",
        ";",
        "\n",
        "\n    ",
        "\t",
        "  ",
        "你好",
        "世界",
        "😀",
        "🤖",
        "é",
        "ß",
        "Привет",
        "مرحبا",
        "123",
        "4567",
        "0.5",
        "'s",
        "'ll",
        "<|im_end|>",
        "<|im_start|>",
        "import numpy as np",
        "print(",
        '"string"',
        "# comment",
        "//",
        "/* */",
        "=>",
        "->",
        "λ",
        "∑",
        "√",
        "™",
        "…",
        "—",
        " the",
        " quick",
        " brown",
        " fox",
        "  ",
        "   ",
        "\r\n",
    ]
    rng = random.Random(seed)
    out = list(fixed)
    while len(out) < count:
        out.append("".join(rng.choice(fragments) for _ in range(rng.randint(1, 12))))
    return out


def test_tokenizer_ids_identical_to_hf(qwen_tokenizer, hf_gguf_tokenizer):
    corpus = tokenizer_corpus()
    assert len(corpus) >= 200
    mismatches = []
    for text in corpus:
        ours = qwen_tokenizer.encode(text)
        theirs = hf_gguf_tokenizer(text, add_special_tokens=False)["input_ids"]
        if ours != theirs:
            mismatches.append((text, ours, theirs))
        assert qwen_tokenizer.decode(ours) == unicodedata.normalize("NFC", text)
    assert not mismatches, mismatches[:3]
