"""Torch versions of every op: the CPU runtime path and the reference the Triton kernels are tested against.

Shape conventions (T = packed tokens of a batch, B = sequences, Hq / Hk = query / kv heads,
D = head_dim, N = KV blocks, S = block_size, V = vocabulary):

* ``k_cache`` / ``v_cache``: ``[N, S, Hk, D]``; token ``p`` of a sequence lives in block
  ``block_tables[b, p // S]`` at offset ``p % S``; its flat slot is ``block * S + p % S``.
* ``context_lens[b]``: tokens of sequence ``b`` in the cache *including* this step's new ones.
* ``cu_seqlens_q``: ``[B + 1]`` offsets of each sequence's new tokens in the packed batch; the
  ``j``-th new token of ``b`` sits at absolute position ``context_lens[b] - q_len_b + j`` and
  attends causally to cache positions ``0 .. that position``.

Ops that mutate say so; all others return new tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritonlm.kernels.qweight import QuantizedWeight


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x * rsqrt(mean(x^2) + eps) * weight`` over the last dim, computed in fp32, cast back."""
    x32 = x.float()
    variance = x32.pow(2).mean(-1, keepdim=True)
    normed = x32 * torch.rsqrt(variance + eps)
    return weight * normed.to(x.dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(x + residual, rms_norm(x + residual))``; inputs are not modified."""
    summed = x + residual
    return summed, rms_norm(summed, weight, eps)


def rope_cos_sin_cache(
    head_dim: int, max_positions: int, rope_theta: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``[max_positions, head_dim]`` float32: cos of the D/2 frequencies, then their sin."""
    inv_freq = 1.0 / (rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    t = torch.arange(max_positions, dtype=torch.int64, device=device).float()
    freqs = torch.outer(t, inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def rotary_embedding(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    """Rotate-half RoPE (Qwen2 / GPT-NeoX layout), **in place** on ``q [T, Hq, D]`` and ``k [T, Hk, D]``.

    ``positions [T]`` int64 are absolute positions; ``cos_sin_cache`` comes from
    :func:`rope_cos_sin_cache`. cos/sin are cast to the activations' dtype before use (as HF does).
    """
    half = q.shape[-1] // 2
    cs = cos_sin_cache.index_select(0, positions)
    cos = cs[:, :half].unsqueeze(1)
    sin = cs[:, half:].unsqueeze(1)
    for x in (q, k):
        c, s = cos.to(x.dtype), sin.to(x.dtype)
        x1 = x[..., :half].clone()
        x2 = x[..., half:]
        # [x1, x2] -> [x1*cos - x2*sin, x2*cos + x1*sin]
        x[..., :half] = x1 * c - x2 * s
        x[..., half:] = x2 * c + x1 * s


def store_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write rows ``k, v [T, Hk, D]`` into the paged caches at flat slots ``slot_mapping [T]``, **in place**.

    A slot of -1 marks a padding row and writes nothing.
    """
    num_blocks, block_size = k_cache.shape[:2]
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    k_cache.view(num_blocks * block_size, *k_cache.shape[2:])[slots] = k[valid].to(k_cache.dtype)
    v_cache.view(num_blocks * block_size, *v_cache.shape[2:])[slots] = v[valid].to(v_cache.dtype)


def _gather_slots(block_table: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """Flat cache slots of positions ``0 .. length-1`` of one sequence."""
    pos = torch.arange(length, device=block_table.device)
    return block_table[pos // block_size].long() * block_size + pos % block_size


def _attend_one(
    q: torch.Tensor, flat_k: torch.Tensor, flat_v: torch.Tensor, slots: torch.Tensor, scale: float
) -> torch.Tensor:
    """``q [Lq, Hq, D]`` (the last ``Lq`` of ``L = len(slots)`` positions) attends causally to the cache.

    Runs torch's fused SDPA the way HF transformers calls it (GQA without repeating k/v, ``is_causal``
    when there is no cached prefix), so low-precision results match HF's as closely as possible.
    """
    q_len, ctx = q.shape[0], slots.shape[0]
    keys = flat_k[slots].transpose(0, 1).unsqueeze(0)  # [1, Hk, L, D]
    values = flat_v[slots].transpose(0, 1).unsqueeze(0)
    query = q.transpose(0, 1).unsqueeze(0)  # [1, Hq, Lq, D]
    gqa = query.shape[1] != keys.shape[1]
    if q_len == 1 or q_len == ctx:
        out = F.scaled_dot_product_attention(query, keys, values, is_causal=q_len > 1, scale=scale, enable_gqa=gqa)
    else:
        # query j sits at position ctx - q_len + j and sees keys 0 .. ctx - q_len + j
        q_pos = torch.arange(ctx - q_len, ctx, device=q.device)[:, None]
        mask = torch.arange(ctx, device=q.device)[None, :] <= q_pos
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out[0].transpose(0, 1)  # [Lq, Hq, D]


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query token per sequence: ``q [B, Hq, D]`` over its ``context_lens[b]`` cached tokens.

    Grouped-query attention: query head ``h`` reads kv head ``h // (Hq // Hk)``. Scores, softmax
    and the weighted sum run as float32 matmuls (a single query is 3-8x faster this way than
    through torch's SDPA on the CPU, and no less exact); a batch pads keys to the longest context
    and masks the padding. Returns ``[B, Hq, D]`` in q's dtype.
    """
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    flat_k = k_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    flat_v = v_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    batch, num_heads = q.shape[:2]
    mask = None
    if batch == 1:
        slots = _gather_slots(block_tables[0], int(context_lens[0]), block_size)[None]  # [1, L]
    else:
        lens = context_lens.to(device=q.device, dtype=torch.long)[:, None]
        pos = torch.arange(int(lens.max()), device=q.device)[None, :]
        # padded positions re-read the sequence's last key (finite data: masked scores and zero
        # weights then contribute exact zeros, where unwritten cache slots could hold NaN)
        read = torch.minimum(pos, lens - 1)  # [B, L]
        slots = block_tables.long().gather(1, read // block_size) * block_size + read % block_size
        mask = pos < lens  # [B, L]
    keys = flat_k[slots].float().permute(0, 2, 3, 1)  # [B, Hk, D, L]
    values = flat_v[slots].float().transpose(1, 2)  # [B, Hk, L, D]
    queries = q.float().view(batch, num_kv_heads, num_heads // num_kv_heads, head_dim)  # [B, Hk, G, D]
    scores = torch.matmul(queries, keys) * scale  # [B, Hk, G, L]
    if mask is not None:
        scores.masked_fill_(~mask[:, None, None, :], float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), values)  # [B, Hk, G, D]
    return out.reshape(batch, num_heads, head_dim).to(q.dtype)


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of a packed variable-length batch ``q [T, Hq, D]`` over the paged cache.

    The new tokens' k/v must already be stored in the cache; keys before them (a cached
    prefix, or earlier chunks of a chunked prefill) are read from the same cache.
    Returns ``[T, Hq, D]`` in q's dtype.
    """
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    flat_k = k_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    flat_v = v_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    out = torch.empty_like(q)
    starts = cu_seqlens_q.tolist()
    for b, ctx in enumerate(context_lens.tolist()):
        lo, hi = starts[b], starts[b + 1]
        if hi == lo:
            continue
        slots = _gather_slots(block_tables[b], int(ctx), block_size)
        out[lo:hi] = _attend_one(q[lo:hi], flat_k, flat_v, slots, scale)
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :I]) * x[..., I:]`` for ``x [..., 2I]``; returns ``[..., I]``."""
    half = x.shape[-1] // 2
    return F.silu(x[..., :half]) * x[..., half:]


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set disallowed logits to -inf, **in place**.

    ``logits [B, V]`` float; ``bitmask [B, ceil(V / 32)]`` int32 where bit ``j`` of word ``w``
    set means token ``32 * w + j`` is allowed. Tokens past the mask's coverage are disallowed.
    """
    num_rows, vocab = logits.shape
    words = bitmask.shape[1]
    bits = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    allowed = ((bitmask.unsqueeze(-1) >> bits) & 1).bool().view(num_rows, words * 32)
    if words * 32 >= vocab:
        allowed = allowed[:, :vocab]
    else:
        allowed = torch.cat(
            [allowed, torch.zeros(num_rows, vocab - words * 32, dtype=torch.bool, device=logits.device)], dim=1
        )
    logits.masked_fill_(~allowed.to(logits.device), float("-inf"))


def quant_linear(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, K] @ w.T + bias`` for a weight-only quantized ``w`` (:mod:`tritonlm.kernels.qweight`):
    dequantized and multiplied in float32, the result cast to ``x``'s dtype. ``[M, N]``."""
    out = F.linear(x.float(), weight.dequantize(torch.float32), None if bias is None else bias.float())
    return out.to(x.dtype)


def pack_quant_weight(weight: QuantizedWeight) -> QuantizedWeight:
    """The layout :func:`quant_linear` reads: the weight itself (backends may repack once at load)."""
    return weight
