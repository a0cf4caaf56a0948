"""Shared set-up for the runtime tests (no tests here): tiny random models with the real
Qwen2.5 vocabulary width, engines over them, and the single-sequence references."""

from __future__ import annotations

import random
from typing import Any

from tests.model.simple import greedy_tokens
from tritonlm.model.config import Qwen2Config
from tritonlm.model.qwen2 import Qwen2ForCausalLM
from tritonlm.runtime.engine import Engine, EngineConfig

VOCAB = 151936
EOS = 151645


def tiny_config(*, layers: int = 2, max_positions: int = 512) -> Qwen2Config:
    """14 query heads over 2 kv heads (the default model's grouping), small everything else."""
    return Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=56,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=max_positions,
        eos_token_id=EOS,
    )


_MODELS: dict[tuple[Any, ...], Qwen2ForCausalLM] = {}


def tiny_model(*, layers: int = 2, seed: int = 0) -> Qwen2ForCausalLM:
    key = (layers, seed)
    if key not in _MODELS:
        _MODELS[key] = Qwen2ForCausalLM.random(tiny_config(layers=layers), seed=seed)
    return _MODELS[key]


def make_engine(tokenizer: Any, model: Qwen2ForCausalLM | None = None, **options: Any) -> Engine:
    options.setdefault("num_kv_blocks", 256)
    return Engine(model or tiny_model(), tokenizer, EngineConfig(**options))


def random_prompts(count: int, *, lo: int = 3, hi: int = 70, seed: int = 0) -> list[list[int]]:
    """Token-id prompts of mixed lengths (mostly not multiples of 16), ordinary-text ids."""
    rng = random.Random(seed)
    return [[rng.randrange(100, 100_000) for _ in range(rng.randrange(lo, hi))] for _ in range(count)]


def reference_greedy(model: Qwen2ForCausalLM, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy tokens of one prompt alone over the contiguous cache (the foundation's path)."""
    return list(greedy_tokens(model, prompt, max_tokens))
