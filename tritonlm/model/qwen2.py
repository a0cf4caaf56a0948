"""The Qwen2 / Qwen2.5 decoder forward pass over a paged KV cache.

Every op goes through :class:`tritonlm.kernels.Ops` (one backend chosen at construction);
the forward never branches on the device. Linear layers are ``F.linear`` through
:meth:`Qwen2ForCausalLM.linear` (q/k/v and gate/up are fused into one matmul each).

A bfloat16 model on the CPU multiplies by weights prepacked for oneDNN (when torch has it)
in every step that decodes: a single row (batch 1, bound by reading the weights) by bf16 packs,
two rows or more by float32 packs of the same bf16 values, because this project's AVX-512 BF16
CPUs run oneDNN's bf16 GEMM 2-4x slower than its fp32 GEMM from two rows up. Products of bf16
values are exact in float32 and both accumulate in float32 and round to bf16, so results differ
only in summation order. A step of prompt tokens alone (a request's prefill, no decodes beside
it) keeps the plain bf16 ``F.linear`` of HF transformers: greedy bf16 decoding is sensitive to
the prompt's rounding, and a lone request's first tokens then match HF's.

Batch invariance (``batch_invariant=True``, the engine's deterministic mode): GEMM libraries
choose blocking and summation order by the number of rows, so by default a row's result can
depend on how many rows share the call. In this mode every linear layer multiplies in calls of
exactly :data:`ROW_TILE` rows (zero-padded), without packs, and attention runs one query row
at a time over the keys up to its position (torch's SDPA picks kernels by shape too), so a
request's logits depend neither on the other requests of its batch nor on how its prompt was
split into chunks or read from the prefix cache. Prefills cost one attention call per token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tritonlm.errors import ModelLoadError
from tritonlm.kernels import Ops, get_ops
from tritonlm.kernels.qweight import QuantizedWeight, concat_rows
from tritonlm.kernels.reference import rope_cos_sin_cache
from tritonlm.model.attention import AttentionMetadata, KVCache
from tritonlm.model.config import Qwen2Config

# rows per GEMM call in batch-invariant mode
ROW_TILE = 16


# A matrix: a dense tensor in the model dtype, or a quantized weight in the layout of
# ``ops.pack_quant_weight`` (what ``ops.quant_linear`` reads).
Matrix = Any


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [H]
    qkv_weight: Matrix  # [q_size + 2 * kv_size, H]
    qkv_bias: torch.Tensor  # [q_size + 2 * kv_size]
    o_weight: Matrix  # [H, q_size]
    post_norm: torch.Tensor  # [H]
    gate_up_weight: Matrix  # [2 * I, H]  (gate rows first, then up)
    down_weight: Matrix  # [H, I]


def hf_weight_names(config: Qwen2Config) -> list[str]:
    """The HF ``Qwen2ForCausalLM`` state-dict names this model needs."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        for proj in ("q", "k", "v"):
            names += [p + f"self_attn.{proj}_proj.weight", p + f"self_attn.{proj}_proj.bias"]
        names += [p + "self_attn.o_proj.weight"]
        names += [p + f"mlp.{proj}_proj.weight" for proj in ("gate", "up", "down")]
    if not config.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


class Qwen2ForCausalLM:
    """Weights plus the forward pass. Not an ``nn.Module``: inference only, no autograd."""

    def __init__(
        self,
        config: Qwen2Config,
        state_dict: Mapping[str, torch.Tensor],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        ops: Ops | None = None,
        packed_matmul: bool | None = None,
        batch_invariant: bool = False,
    ) -> None:
        """``packed_matmul``: multiply by oneDNN-prepacked weights (None: for a bf16 model on the
        CPU when torch has oneDNN); ``batch_invariant``: results per request independent of the
        batch (see the module docstring; no packs then)."""
        self.config = config
        self.batch_invariant = batch_invariant
        self.dtype = dtype
        self.device = torch.device(device)
        self.ops = ops or get_ops("torch")
        missing = [n for n in hf_weight_names(config) if n not in state_dict]
        if missing:
            raise ModelLoadError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")

        def take(name: str, shape: tuple[int, ...]) -> torch.Tensor | QuantizedWeight:
            t = state_dict[name]
            if tuple(t.shape) != shape:
                raise ModelLoadError(f"tensor {name}: shape {tuple(t.shape)}, expected {shape}")
            if isinstance(t, QuantizedWeight):
                return t.to(self.device)
            return t.to(device=self.device, dtype=dtype)

        def matrix(*names_shapes: tuple[str, tuple[int, int]]) -> Matrix:
            """One matrix from row blocks (fused projections), packed for the backend if quantized."""
            parts = [take(name, shape) for name, shape in names_shapes]
            if all(isinstance(p, torch.Tensor) for p in parts):
                return torch.cat(parts).contiguous() if len(parts) > 1 else parts[0].contiguous()
            if not all(isinstance(p, QuantizedWeight) for p in parts):  # mixed: hold all dense
                dense = [p.dequantize(dtype) if isinstance(p, QuantizedWeight) else p for p in parts]
                return torch.cat(dense).contiguous()
            return self.ops.pack_quant_weight(concat_rows(parts) if len(parts) > 1 else parts[0])

        c = config
        h, q, kv, inter = c.hidden_size, c.q_size, c.kv_size, c.intermediate_size
        embed = take("model.embed_tokens.weight", (c.vocab_size, h))
        # a quantized embedding stays as the contract layout: rows are dequantized on lookup
        self.embed_tokens: torch.Tensor | QuantizedWeight = (
            embed if isinstance(embed, QuantizedWeight) else embed.contiguous()
        )
        self.norm = take("model.norm.weight", (h,))
        self.layers: list[LayerWeights] = []
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            self.layers.append(
                LayerWeights(
                    input_norm=take(p + "input_layernorm.weight", (h,)),
                    qkv_weight=matrix(
                        (p + "self_attn.q_proj.weight", (q, h)),
                        (p + "self_attn.k_proj.weight", (kv, h)),
                        (p + "self_attn.v_proj.weight", (kv, h)),
                    ),
                    qkv_bias=torch.cat(
                        [
                            take(p + "self_attn.q_proj.bias", (q,)),
                            take(p + "self_attn.k_proj.bias", (kv,)),
                            take(p + "self_attn.v_proj.bias", (kv,)),
                        ]
                    ).contiguous(),
                    o_weight=matrix((p + "self_attn.o_proj.weight", (h, q))),
                    post_norm=take(p + "post_attention_layernorm.weight", (h,)),
                    gate_up_weight=matrix(
                        (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h))
                    ),
                    down_weight=matrix((p + "mlp.down_proj.weight", (h, inter))),
                )
            )
        head_name = "model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
        if c.tie_word_embeddings and isinstance(self.embed_tokens, torch.Tensor):
            self.lm_head: Matrix = self.embed_tokens
        else:
            self.lm_head = matrix((head_name, (c.vocab_size, h)))
        matrices = [self.lm_head]
        for lw in self.layers:
            matrices += [lw.qkv_weight, lw.o_weight, lw.gate_up_weight, lw.down_weight]
        self.quantized = not all(isinstance(w, torch.Tensor) for w in matrices)
        self.cos_sin_cache = rope_cos_sin_cache(c.head_dim, c.max_position_embeddings, c.rope_theta, self.device)
        self.scale = c.head_dim**-0.5
        self._packed: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        if batch_invariant:
            packed_matmul = False
        elif packed_matmul is None:
            on_cpu = self.device.type == "cpu" and _onednn_linear_available()
            packed_matmul = not self.quantized and dtype == torch.bfloat16 and on_cpu
        if packed_matmul:
            self._pack_weights()

    def _pack_weights(self) -> None:
        """id(weight or bias) -> (bf16 pack, float32 pack) for :meth:`linear` (biases unpacked)."""
        reorder = torch.ops.mkldnn._reorder_linear_weight
        packed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # the head first: its float32 copy (the largest, [vocab, hidden]) is then made while no
        # other pack is resident yet, so the load's peak is the packs' total, not that plus it
        if isinstance(self.lm_head, torch.Tensor):
            packed[id(self.lm_head)] = (reorder(self.lm_head, None), reorder(self.lm_head.float(), None))
        for lw in self.layers:
            for w in (lw.qkv_weight, lw.o_weight, lw.gate_up_weight, lw.down_weight):
                if isinstance(w, torch.Tensor):
                    packed[id(w)] = (reorder(w, None), reorder(w.float(), None))
            packed[id(lw.qkv_bias)] = (lw.qkv_bias, lw.qkv_bias.float())
        self._packed = packed

    def linear(
        self, x: torch.Tensor, weight: Matrix, bias: torch.Tensor | None = None, packed: bool = False
    ) -> torch.Tensor:
        """``x [N, in] @ weight.T + bias`` in x's dtype; ``packed``: by the prepacked weights
        where the model has them (see the module docstring). Quantized weights go to
        ``ops.quant_linear``."""
        if not isinstance(weight, torch.Tensor):
            multiply = self.ops.quant_linear
        elif self.batch_invariant or not packed or self._packed is None:
            multiply = F.linear
        else:
            multiply = self._packed_linear
        # a packed weight may declare its kernel batch-invariant already (the CPU kernel does)
        if self.batch_invariant and not getattr(weight, "batch_invariant", False):
            return _tiled(multiply, x, weight, bias)
        return multiply(x, weight, bias)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids [T]`` -> ``[T, H]`` rows of the embedding, in the model dtype."""
        if isinstance(self.embed_tokens, QuantizedWeight):
            return self.embed_tokens.dequantize(self.dtype, rows=input_ids)
        return F.embedding(input_ids, self.embed_tokens)

    def _packed_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        packed = self._packed
        wide = x.shape[0] > 1
        w = packed[id(weight)][wide]
        b = None if bias is None else packed[id(bias)][wide]
        if wide:
            return torch.ops.mkldnn._linear_pointwise(x.float(), w, b, "none", [], "").to(x.dtype)
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")

    # ------------------------------------------------------------------------------------
    @classmethod
    def random(
        cls,
        config: Qwen2Config,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        ops: Ops | None = None,
    ) -> Qwen2ForCausalLM:
        """A model with random weights (tests and benches)."""
        return cls(config, random_state_dict(config, seed=seed), dtype=dtype, device=device, ops=ops)

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> KVCache:
        c = self.config
        return KVCache.allocate(
            c.num_hidden_layers, num_blocks, block_size, c.num_key_value_heads, c.head_dim, self.dtype, self.device
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """HF-named tensors (un-fused), e.g. to save the model as a HF folder (dense models only:
        a quantized model's packed layout is the backend's; convert its GGUF instead)."""
        if self.quantized or not isinstance(self.embed_tokens, torch.Tensor):
            raise ModelLoadError("state_dict() of a quantized model: convert the source GGUF (tritonlm convert)")
        c = self.config
        q, kv, inter = c.q_size, c.kv_size, c.intermediate_size
        out = {"model.embed_tokens.weight": self.embed_tokens, "model.norm.weight": self.norm}
        for i, lw in enumerate(self.layers):
            p = f"model.layers.{i}."
            out[p + "input_layernorm.weight"] = lw.input_norm
            out[p + "post_attention_layernorm.weight"] = lw.post_norm
            for name, (w, b) in zip(
                ("q", "k", "v"),
                zip(lw.qkv_weight.split([q, kv, kv]), lw.qkv_bias.split([q, kv, kv]), strict=True),
                strict=True,
            ):
                out[p + f"self_attn.{name}_proj.weight"] = w.contiguous()
                out[p + f"self_attn.{name}_proj.bias"] = b.contiguous()
            out[p + "self_attn.o_proj.weight"] = lw.o_weight
            gate, up = lw.gate_up_weight.split([inter, inter])
            out[p + "mlp.gate_proj.weight"] = gate.contiguous()
            out[p + "mlp.up_proj.weight"] = up.contiguous()
            out[p + "mlp.down_proj.weight"] = lw.down_weight
        if not c.tie_word_embeddings:
            out["lm_head.weight"] = self.lm_head
        return out

    # ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        kv_cache: KVCache,
    ) -> torch.Tensor:
        """Packed tokens ``input_ids [T]`` at ``positions [T]`` -> final hidden states ``[T, H]``.

        Mutates ``kv_cache``: the new tokens' k/v are written at ``attn.slot_mapping``.
        """
        ops, c = self.ops, self.config
        num_tokens = input_ids.shape[0]
        eps = c.rms_norm_eps
        q_size, kv_size = c.q_size, c.kv_size
        packed = self.uses_packed_matmul(attn)
        hidden = self.embed(input_ids)
        residual: torch.Tensor | None = None
        for i, lw in enumerate(self.layers):
            if residual is None:
                residual, x = hidden, ops.rms_norm(hidden, lw.input_norm, eps)
            else:
                residual, x = ops.fused_add_rms_norm(hidden, residual, lw.input_norm, eps)
            qkv = self.linear(x, lw.qkv_weight, lw.qkv_bias, packed)
            q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
            q = q.reshape(num_tokens, c.num_attention_heads, c.head_dim)
            k = k.reshape(num_tokens, c.num_key_value_heads, c.head_dim)
            v = v.reshape(num_tokens, c.num_key_value_heads, c.head_dim)
            ops.rotary_embedding(q, k, positions, self.cos_sin_cache)
            k_cache, v_cache = kv_cache.k[i], kv_cache.v[i]
            ops.store_kv_cache(k, v, k_cache, v_cache, attn.slot_mapping)
            if self.batch_invariant:
                o = self._row_attention(q, k_cache, v_cache, attn, positions)
            elif attn.is_decode:
                o = ops.paged_decode_attention(q, k_cache, v_cache, attn.block_tables, attn.context_lens, self.scale)
            elif attn.num_decode_seqs:
                nd = attn.num_decode_seqs  # decode rows first (one token each), then the prefill chunks
                o = torch.cat(
                    [
                        ops.paged_decode_attention(
                            q[:nd], k_cache, v_cache, attn.block_tables[:nd], attn.context_lens[:nd], self.scale
                        ),
                        ops.prefill_attention(
                            q[nd:],
                            k_cache,
                            v_cache,
                            attn.cu_seqlens_q[nd:] - nd,
                            attn.context_lens[nd:],
                            attn.block_tables[nd:],
                            self.scale,
                        ),
                    ]
                )
            else:
                o = ops.prefill_attention(
                    q, k_cache, v_cache, attn.cu_seqlens_q, attn.context_lens, attn.block_tables, self.scale
                )
            hidden = self.linear(o.reshape(num_tokens, q_size), lw.o_weight, None, packed)
            residual, x = ops.fused_add_rms_norm(hidden, residual, lw.post_norm, eps)
            gate_up = self.linear(x, lw.gate_up_weight, None, packed)
            hidden = self.linear(ops.silu_and_mul(gate_up), lw.down_weight, None, packed)
        if residual is None:
            return ops.rms_norm(hidden, self.norm, eps)
        _, out = ops.fused_add_rms_norm(hidden, residual, self.norm, eps)
        return out

    __call__ = forward

    def _row_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        attn: AttentionMetadata,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """Batch-invariant attention: each query row ``[T, Hq, D]`` attends alone, as a one-token
        decode over the keys up to its own position, so a token's result is the same whether it
        comes in a prompt, a chunk of one, or a decode step, beside any other requests."""
        q_lens = attn.cu_seqlens_q[1:] - attn.cu_seqlens_q[:-1]
        tables = attn.block_tables.repeat_interleave(q_lens.long(), dim=0)
        ctx = (positions + 1).to(torch.int32)
        attend = self.ops.paged_decode_attention
        rows = [
            attend(q[i : i + 1], k_cache, v_cache, tables[i : i + 1], ctx[i : i + 1], self.scale)
            for i in range(q.shape[0])
        ]
        return torch.cat(rows)

    @staticmethod
    def uses_packed_matmul(attn: AttentionMetadata) -> bool:
        """Whether a step multiplies by the prepacked weights: any step that decodes, never a
        step of prompt tokens alone (see the module docstring). The forward and the logits of
        its hidden states must agree, so both ask here."""
        return attn.is_decode or attn.num_decode_seqs > 0

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor, *, packed: bool = False) -> torch.Tensor:
        """``hidden [N, H]`` -> logits ``[N, V]`` in float32 (rounded to the model dtype first).
        ``packed``: :meth:`uses_packed_matmul` of the forward that produced ``hidden``."""
        return self.linear(hidden, self.lm_head, None, packed).float()


def _tiled(multiply: Any, x: torch.Tensor, weight: Matrix, bias: torch.Tensor | None) -> torch.Tensor:
    """``multiply(x, weight, bias)`` in calls of exactly ROW_TILE rows (the last tile zero-padded),
    so each row's summation order is the same whatever the number of rows (module docstring)."""
    num_rows = x.shape[0]
    pad = -num_rows % ROW_TILE
    if pad:
        x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
    return torch.cat([multiply(tile, weight, bias) for tile in x.split(ROW_TILE)])[:num_rows]


def _onednn_linear_available() -> bool:
    """oneDNN's prepacked bf16 linear exists in this torch build and this CPU runs it (it needs
    AVX-512 BW/VL/DQ or AVX-NE-CONVERT: on an AVX2-only CPU reordering a bf16 weight raises)."""
    try:
        return (
            torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        )
    except (AttributeError, RuntimeError):
        return False


def random_state_dict(config: Qwen2Config, *, seed: int = 0, std: float = 0.02) -> dict[str, torch.Tensor]:
    """HF-named random float32 weights for ``config`` (norm weights around 1, biases small)."""
    gen = torch.Generator().manual_seed(seed)
    c = config
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size)}
    shapes["model.norm.weight"] = (c.hidden_size,)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (c.hidden_size,)
        shapes[p + "post_attention_layernorm.weight"] = (c.hidden_size,)
        for name, out in (("q", c.q_size), ("k", c.kv_size), ("v", c.kv_size)):
            shapes[p + f"self_attn.{name}_proj.weight"] = (out, c.hidden_size)
            shapes[p + f"self_attn.{name}_proj.bias"] = (out,)
        shapes[p + "self_attn.o_proj.weight"] = (c.hidden_size, c.q_size)
        shapes[p + "mlp.gate_proj.weight"] = (c.intermediate_size, c.hidden_size)
        shapes[p + "mlp.up_proj.weight"] = (c.intermediate_size, c.hidden_size)
        shapes[p + "mlp.down_proj.weight"] = (c.hidden_size, c.intermediate_size)
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            out[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias"):
            out[name] = 0.1 * torch.randn(shape, generator=gen)
        else:
            out[name] = std * torch.randn(shape, generator=gen) * (5.0 if "embed" in name else 1.0)
    return out
