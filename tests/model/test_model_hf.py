"""The Qwen2 forward against HF transformers' Qwen2ForCausalLM on tiny random models."""

from __future__ import annotations

import pytest
import torch

from tests.model.simple import ContiguousSequence
from tritonlm.model.config import Qwen2Config
from tritonlm.model.loader import load_model
from tritonlm.model.qwen2 import random_state_dict

transformers = pytest.importorskip("transformers")

TINY_CONFIGS = {
    # GQA ratio 7 (like Qwen2.5-0.5B's 14/2), untied lm_head, odd sizes
    "gqa7_untied": dict(
        hidden_size=112,
        num_attention_heads=14,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=150,
        tie_word_embeddings=False,
    ),
    # GQA ratio 1 (plain multi-head), tied embeddings, odd sizes
    "mha_tied": dict(
        hidden_size=60,
        num_attention_heads=5,
        num_key_value_heads=5,
        head_dim=12,
        intermediate_size=97,
        tie_word_embeddings=True,
    ),
    # GQA ratio 7, tied
    "gqa7_tied": dict(
        hidden_size=84,
        num_attention_heads=7,
        num_key_value_heads=1,
        head_dim=12,
        intermediate_size=130,
        tie_word_embeddings=True,
    ),
}


def make_hf_folder(tmp_path, name: str, seed: int):
    cfg = Qwen2Config(
        vocab_size=311,
        num_hidden_layers=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        eos_token_id=310,
        **TINY_CONFIGS[name],
    )
    hf_config = transformers.Qwen2Config(**cfg.to_hf_dict())
    hf_model = transformers.Qwen2ForCausalLM(hf_config).eval().float()
    state = random_state_dict(cfg, seed=seed)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    assert not unexpected
    assert all(m == "lm_head.weight" for m in missing) and (cfg.tie_word_embeddings or not missing)
    folder = tmp_path / name
    hf_model.save_pretrained(folder)
    # a tokenizer is not needed by these tests; loader only wants tokenizer.json: build a tiny one
    from tritonlm.model.tokenizer import BYTE_TO_UNICODE, build_byte_level_bpe

    tokens = [BYTE_TO_UNICODE[b] for b in range(256)] + [f"t{i}" for i in range(256, 310)] + ["<|end|>"]
    tok = build_byte_level_bpe(tokens, [], [(310, "<|end|>", True)])
    tok.save(str(folder / "tokenizer.json"))
    return cfg, hf_model, folder


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_logits_match_hf_prefill_and_decode(tmp_path, name):
    seed = abs(hash(name)) % 10_000
    cfg, hf_model, folder = make_hf_folder(tmp_path, name, seed)
    ours = load_model(str(folder), dtype="float32", backend="torch").model
    assert ours.config.tie_word_embeddings == cfg.tie_word_embeddings

    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, cfg.vocab_size, (1, 23), generator=gen)
    seq = ContiguousSequence(ours, 64)
    with torch.no_grad():
        out = hf_model(prompt, use_cache=True)
        past = out.past_key_values
        ref = out.logits[0]
        got = seq.step(prompt[0].tolist())
        torch.testing.assert_close(got, ref, atol=1e-4 * ref.abs().max().item(), rtol=0)
        token = int(ref[-1].argmax())
        for _ in range(16):
            out = hf_model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            ref = out.logits[0, -1]
            got = seq.step([token])[-1]
            torch.testing.assert_close(got, ref, atol=1e-4 * ref.abs().max().item(), rtol=0)
            token = int(ref.argmax())
