"""The tiny random Qwen2 run end to end on the Triton kernels (interpreted) matches the torch ops.

Chunked prefill (a second chunk over a cached prefix) batched with a plain prefill, then 16
greedy decode steps of both sequences through the paged cache; logits within the float32
tolerance at every step and the generated tokens identical.
"""

from __future__ import annotations

import pytest
import torch

from tritonlm.config import env
from tritonlm.kernels import get_ops
from tritonlm.model.attention import AttentionMetadata
from tritonlm.model.config import Qwen2Config
from tritonlm.model.qwen2 import Qwen2ForCausalLM

# the interpreted kernels on the CPU (default), or with TRITON_INTERPRET=0 the compiled ones on CUDA
BACKEND, DEVICE = ("interpret", "cpu") if env().triton_interpret else ("triton", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs TRITON_INTERPRET=1 or a CUDA device"
)

TOL = 1e-5
BLOCK_SIZE = 16


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if torch.isnan(a).any():
        return float("inf")
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2)])
def test_tiny_model_interpret_matches_torch(heads: int, kv_heads: int) -> None:
    config = Qwen2Config(
        vocab_size=300,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=64,
        max_position_embeddings=256,
    )
    models = {
        name: Qwen2ForCausalLM.random(config, seed=3, dtype=torch.float32, device=DEVICE, ops=get_ops(backend))
        for name, backend in (("torch", "torch"), ("kernels", BACKEND))
    }
    caches = {name: m.allocate_kv_cache(num_blocks=8, block_size=BLOCK_SIZE) for name, m in models.items()}
    g = torch.Generator().manual_seed(7)
    prompt_a = torch.randint(0, config.vocab_size, (21,), generator=g)
    prompt_b = torch.randint(0, config.vocab_size, (7,), generator=g)
    tables = [[3, 0, 5], [1, 4]]  # shuffled blocks, enough for the prompts + 16 tokens

    def step(tokens: list[torch.Tensor], starts: list[int], seqs: list[int]) -> dict[str, torch.Tensor]:
        """One forward of ``tokens[i]`` for sequence ``seqs[i]`` starting at position ``starts[i]``."""
        q_lens = [len(t) for t in tokens]
        ctx = [s + n for s, n in zip(starts, q_lens, strict=True)]
        attn = AttentionMetadata.build(q_lens, ctx, [tables[s] for s in seqs], BLOCK_SIZE, device=DEVICE)
        ids = torch.cat(tokens).to(DEVICE)
        pos = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, q_lens, strict=True)]).to(DEVICE)
        return {name: m.compute_logits(m.forward(ids, pos, attn, caches[name])) for name, m in models.items()}

    # chunk 1 of A (16 tokens) with all of B, then chunk 2 of A (5 tokens over its 16 cached)
    out = step([prompt_a[:16], prompt_b], [0, 0], [0, 1])
    assert rel_err(out["kernels"], out["torch"]) <= TOL
    last_b = {name: o[-1] for name, o in out.items()}
    out = step([prompt_a[16:]], [16], [0])
    assert rel_err(out["kernels"], out["torch"]) <= TOL
    last = {name: torch.stack([out[name][-1], last_b[name]]) for name in out}

    generated: dict[str, list[list[int]]] = {name: [[], []] for name in models}
    nxt = {name: last[name].argmax(-1) for name in models}
    lens = [21, 7]
    for _ in range(16):
        for name in models:
            for b in range(2):
                generated[name][b].append(int(nxt[name][b]))
        assert torch.equal(nxt["kernels"], nxt["torch"])
        logits: dict[str, torch.Tensor] = {}
        for name, m in models.items():
            attn = AttentionMetadata.build([1, 1], [lens[0] + 1, lens[1] + 1], tables, BLOCK_SIZE, device=DEVICE)
            assert attn.is_decode
            pos = torch.tensor(lens, device=DEVICE)
            logits[name] = m.compute_logits(m.forward(nxt[name], pos, attn, caches[name]))
        assert rel_err(logits["kernels"], logits["torch"]) <= TOL
        nxt = {name: lg.argmax(-1) for name, lg in logits.items()}
        lens = [n + 1 for n in lens]
    assert generated["kernels"] == generated["torch"]
    assert len(generated["torch"][0]) == 16
