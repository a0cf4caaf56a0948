"""Writes tiny Qwen2 GGUF files with random weights, for loader tests that need no download."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from tritonlm.model.config import Qwen2Config
from tritonlm.model.qwen2 import random_state_dict
from tritonlm.model.tokenizer import BYTE_TO_UNICODE

Q = gguf.GGMLQuantizationType

# HF name suffix -> GGUF name suffix (per layer)
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}

TINY_CONFIG = Qwen2Config(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    max_position_embeddings=128,
    bos_token_id=297,
    eos_token_id=298,
    pad_token_id=297,
)

TINY_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{_LAYER[rest]}"


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """256 byte tokens, a few merges, 3 control tokens at 297..299 (ids 256.. are merges)."""
    tokens = [BYTE_TO_UNICODE[b] for b in range(256)]
    merges = []
    pairs = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("Ġwor", "l")]
    for a, b in pairs:
        merges.append(f"{a} {b}")
        tokens.append(a + b)
    while len(tokens) < 297:
        tokens.append(f"[PAD{len(tokens)}]")
    tokens += ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]
    types = [1] * 256 + [1] * len(pairs) + [5] * (297 - 256 - len(pairs)) + [3, 3, 3]
    return tokens, types, merges


def write_tiny_gguf(
    path: Path, *, qtypes: dict[str, gguf.GGMLQuantizationType] | None = None, seed: int = 0
) -> tuple[Qwen2Config, dict[str, torch.Tensor]]:
    """A 2-layer Qwen2 GGUF; ``qtypes`` maps GGUF tensor-name suffixes to storage types (default F32)."""
    cfg = TINY_CONFIG
    state = random_state_dict(cfg, seed=seed)
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    tokens, types, merges = tiny_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(297)
    writer.add_eos_token_id(298)
    writer.add_pad_token_id(297)
    writer.add_chat_template(TINY_TEMPLATE)
    qtypes = qtypes or {}
    for hf_name, tensor in state.items():
        name = gguf_name(hf_name)
        arr = tensor.numpy().astype(np.float32)
        qtype = next((q for suffix, q in qtypes.items() if name.endswith(suffix)), Q.F32)
        if arr.ndim == 1 or qtype == Q.F32:
            writer.add_tensor(name, arr)
        elif qtype == Q.F16:
            writer.add_tensor(name, arr.astype(np.float16))
        else:
            data = gguf.quants.quantize(arr, qtype)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return cfg, state
