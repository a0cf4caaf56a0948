"""The runtime on the real default model (slow): batched greedy equals each prompt alone over
the contiguous cache (float32), and the bfloat16 chat path answers and streams."""

from __future__ import annotations

import pytest

from tests.model.simple import greedy_tokens
from tritonlm.runtime.llm import LLM
from tritonlm.runtime.sampling_params import SamplingParams

pytestmark = pytest.mark.slow

QUESTIONS = [
    "Write a Python function that reverses a string.",
    "What is a KV cache?",
    "Name three sorting algorithms.",
    "def add(a, b):",
]


def test_batched_greedy_matches_single_sequence_float32(default_model_f32) -> None:
    tok = default_model_f32.tokenizer
    prompts = [
        tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True))
        for q in QUESTIONS
    ]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    with LLM.from_loaded(default_model_f32, kv_cache_bytes=256 << 20, max_model_len=1024) as llm:
        outputs = llm.generate(prompts, params)
    for prompt, out in zip(prompts, outputs, strict=True):
        assert out.outputs[0].token_ids == list(greedy_tokens(default_model_f32.model, prompt, 12))


def test_chat_generate_and_stream_bfloat16(default_model) -> None:
    with LLM.from_loaded(default_model, kv_cache_bytes=256 << 20, max_model_len=2048) as llm:
        chat = [{"role": "user", "content": "Say hello in French, one word."}]
        params = SamplingParams(temperature=0, max_tokens=16)
        out = llm.generate(chat, params)[0]
        assert out.outputs[0].finish_reason in ("stop", "length") and out.text.strip()
        stream = llm.stream(chat, params)
        assert "".join(stream) == stream.output.text == out.text
        assert stream.output.usage.completion_tokens == len(out.outputs[0].token_ids)
