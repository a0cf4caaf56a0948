"""The real default model (Qwen2.5-Coder-0.5B-Instruct GGUF) against HF transformers loading the same GGUF."""

from __future__ import annotations

import random
import unicodedata

import pytest
import torch

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


@pytest.fixture(scope="module")
def hf_gguf_model(default_gguf_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(default_gguf_path.parent), gguf_file=default_gguf_path.name, dtype=torch.float32
    )
    return model.eval()


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


def test_weights_equal_hf_dequantization(default_model_f32, hf_gguf_model):
    ours = default_model_f32.model.state_dict()
    theirs = hf_gguf_model.state_dict()
    assert set(ours) <= set(theirs)
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


def test_float32_greedy_48_tokens_identical_to_hf(default_model_f32, hf_gguf_model):
    tok = default_model_f32.tokenizer
    eos = tok.eos_token_ids
    for prompt in CHAT_PROMPTS:
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}]))
        ours = list(greedy_tokens(default_model_f32.model, ids, 48, stop_ids=eos))
        ref = _until_eos(_hf_greedy(hf_gguf_model, ids, 48, eos), eos)
        assert ours == ref, (prompt, tok.decode(ours), tok.decode(ref))
        assert len(ours) == 48 or ours[-1] in eos


def test_bfloat16_first_16_tokens_match_hf_on_4_of_5(default_model, hf_gguf_model):
    hf_bf16 = hf_gguf_model.to(torch.bfloat16)
    try:
        tok = default_model.tokenizer
        eos = tok.eos_token_ids
        same = 0
        for prompt in CHAT_PROMPTS:
            ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}]))
            ours = list(greedy_tokens(default_model.model, ids, 16, stop_ids=eos))
            ref = _until_eos(_hf_greedy(hf_bf16, ids, 16, eos), eos)
            same += ours == ref
        print(f"bfloat16: {same}/5 prompts gave HF's first 16 greedy tokens")
        assert same >= 4, f"only {same}/5 prompts matched HF bfloat16"
    finally:
        hf_gguf_model.to(torch.float32)


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
