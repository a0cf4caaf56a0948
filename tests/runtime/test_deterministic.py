"""Deterministic (batch-invariant) mode: a request's greedy tokens and logits do not depend on the
requests that share its batches, in bfloat16 too."""

from __future__ import annotations

import random

import pytest
import torch

from tests.runtime.helpers import VOCAB, make_engine
from tritonlm.model.attention import AttentionMetadata
from tritonlm.model.config import Qwen2Config
from tritonlm.model.qwen2 import Qwen2ForCausalLM, random_state_dict
from tritonlm.runtime.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


def _config() -> Qwen2Config:
    # the down projection's K = 2432 is wide enough for GEMM libraries to change their blocking with the row count
    return Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=2432,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        eos_token_id=151645,
    )


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state_dict(_config(), seed=3, std=0.08)


def _model(state, *, batch_invariant: bool) -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(_config(), state, dtype=torch.bfloat16, batch_invariant=batch_invariant)


def _prompts(count: int = 8, seed: int = 5) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, 100_000) for _ in range(rng.randrange(5, 60))] for _ in range(count)]


def _decode_logits(model: Qwen2ForCausalLM, hidden_rows: torch.Tensor) -> torch.Tensor:
    return model.compute_logits(hidden_rows, packed=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_linear_rows_do_not_depend_on_their_neighbours(state, dtype) -> None:
    """Each row of a 1..40-row product by a Qwen2.5-0.5B down projection ([896, 4864]) equals the
    row computed alone, bitwise."""
    model = _model(state, batch_invariant=True)
    gen = torch.Generator().manual_seed(0)
    w = (0.02 * torch.randn(896, 4864, generator=gen)).to(dtype)
    x = torch.randn(40, 4864, generator=gen).to(dtype)
    alone = torch.cat([model.linear(x[i : i + 1], w) for i in range(40)])
    for rows in (2, 3, 16, 17, 40):
        assert torch.equal(model.linear(x[:rows], w), alone[:rows]), rows


def test_plain_matmul_is_not_batch_invariant_here() -> None:
    """The check above can fail: on this CPU the plain product of some dtype differs by row count
    (which dtype depends on the CPU: bf16 on AVX-512 BF16, float32 on AVX2-only machines)."""
    gen = torch.Generator().manual_seed(0)
    differs = []
    for dtype in (torch.bfloat16, torch.float32):
        w = (0.02 * torch.randn(896, 4864, generator=gen)).to(dtype)
        x = torch.randn(40, 4864, generator=gen).to(dtype)
        plain = torch.cat([torch.nn.functional.linear(x[i : i + 1], w) for i in range(40)])
        differs.append(not torch.equal(torch.nn.functional.linear(x, w), plain))
    assert any(differs)


def _run(engine, prompts: list[list[int]]) -> list[list[int]]:
    ids = [engine.add_request(p, GREEDY) for p in prompts]
    outputs = engine.run_until_done()
    engine.check_block_accounting()
    return [outputs[i].outputs[0].token_ids for i in ids]


def test_engine_tokens_alone_equal_tokens_in_any_batch(qwen_tokenizer, state) -> None:
    model = _model(state, batch_invariant=True)
    prompts = _prompts()
    alone = [_run(make_engine(qwen_tokenizer, model), [p])[0] for p in prompts]
    assert all(len(tokens) == GREEDY.max_tokens for tokens in alone)
    assert _run(make_engine(qwen_tokenizer, model), prompts) == alone
    # prompts split into chunks by a small token budget, beside other requests' decodes
    assert _run(make_engine(qwen_tokenizer, model, max_num_batched_tokens=24), prompts) == alone
    # a second pass over the same engine reads prompt prefixes from the prefix cache
    engine = make_engine(qwen_tokenizer, model)
    _run(engine, prompts[::2])
    assert _run(engine, prompts) == alone
    assert engine.block_manager.num_cache_hit_blocks > 0


def test_decode_attention_rows_are_computed_per_sequence(state) -> None:
    """A decode step's logits for one sequence equal those of the same step with the sequence alone."""
    model = _model(state, batch_invariant=True)
    cache = model.allocate_kv_cache(64, 16)
    prompts = _prompts(5, seed=9)
    # prefill each prompt alone into its own blocks
    tables = [list(range(4 * b, 4 * b + 4)) for b in range(len(prompts))]
    for p, table in zip(prompts, tables, strict=True):
        n = len(p)
        attn = AttentionMetadata(
            slot_mapping=torch.tensor([table[i // 16] * 16 + i % 16 for i in range(n)]),
            block_tables=torch.tensor([table], dtype=torch.int32),
            context_lens=torch.tensor([n], dtype=torch.int32),
            cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32),
            max_query_len=n,
            num_decode_seqs=0,
        )
        model.forward(torch.tensor(p), torch.arange(n), attn, cache)

    def decode(rows: list[int]) -> torch.Tensor:
        lens = [len(prompts[b]) + 1 for b in rows]
        attn = AttentionMetadata(
            slot_mapping=torch.tensor(
                [tables[b][(n - 1) // 16] * 16 + (n - 1) % 16 for b, n in zip(rows, lens, strict=True)]
            ),
            block_tables=torch.tensor([tables[b] for b in rows], dtype=torch.int32),
            context_lens=torch.tensor(lens, dtype=torch.int32),
            cu_seqlens_q=torch.arange(len(rows) + 1, dtype=torch.int32),
            max_query_len=1,
            num_decode_seqs=len(rows),
        )
        hidden = model.forward(torch.tensor([7] * len(rows)), torch.tensor(lens) - 1, attn, cache)
        return _decode_logits(model, hidden)

    batched = decode(list(range(len(prompts))))
    for b in range(len(prompts)):
        assert torch.equal(decode([b])[0], batched[b]), b


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["dense", "quantized"])
def test_default_model_bfloat16_eight_prompts_alone_and_together(default_model_dir, default_gguf_path, weights) -> None:
    """The acceptance case: 8 chat prompts on the default model, bfloat16, greedy, deterministic
    mode: each prompt's tokens generated alone equal its tokens generated in one batch of 8
    (dense bf16 weights, and the GGUF's quantized weights on the CPU kernel)."""
    from tritonlm.model.loader import load_model
    from tritonlm.runtime.llm import LLM

    source = default_model_dir if weights == "dense" else default_gguf_path
    loaded = load_model(str(source), dtype="bfloat16", backend="torch", deterministic=True)
    questions = [
        "Write a Python function that reverses a string.",
        "What is a KV cache?",
        "Name three sorting algorithms.",
        "Explain recursion in one sentence.",
        "Write a SQL query that counts rows in a table named users.",
        "What does HTTP 404 mean?",
        "Give a regular expression for an email address.",
        "Translate 'good morning' to Spanish.",
    ]
    chats = [[{"role": "user", "content": q}] for q in questions]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    with LLM.from_loaded(loaded, kv_cache_bytes=256 << 20, max_model_len=1024) as llm:
        together = [o.outputs[0].token_ids for o in llm.generate(chats, params)]
    alone = []
    for chat in chats:  # a fresh engine each time: no prefix cache shared with the batch
        with LLM.from_loaded(loaded, kv_cache_bytes=256 << 20, max_model_len=1024) as llm:
            alone.append(llm.generate([chat], params)[0].outputs[0].token_ids)
    assert all(len(tokens) == params.max_tokens for tokens in alone)
    assert together == alone
