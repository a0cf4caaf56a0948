"""Causal prefill attention over a packed variable-length batch and the paged KV cache.

The new tokens' k/v are already in the cache, so one code path reads every key (a cached
prefix, earlier chunks of a chunked prefill, and the new tokens) through the block table.
Query tile ``i`` of the grid belongs to the sequence ``b`` with the largest
``cu_seqlens_q[b] // BLOCK_M + b <= i`` (found by binary search in the kernel): the grid
``T // BLOCK_M + B`` covers every sequence's tiles without reading lengths on the host.
One program per (query tile, query head); online softmax in fp32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tritonlm.errors import ConfigError
from tritonlm.kernels._utils import (
    KernelSpec,
    check_device,
    check_last_dim_contiguous,
    check_tensor,
    interpreting,
    mma,
    paged_kv_offsets,
    ptr_sig,
    to_dtype,
)
from tritonlm.kernels.dtypes import FLOAT_DTYPES


class PrefillConfig(NamedTuple):
    block_m: int  # query tokens per program
    block_n: int  # KV tokens per inner iteration
    num_warps: int
    num_stages: int


# head_dim -> launch config (the only head dims the launcher accepts)
CONFIGS: dict[int, PrefillConfig] = {
    64: PrefillConfig(64, 64, 4, 1),
    128: PrefillConfig(64, 32, 4, 1),
}


@triton.jit
def _prefill_attention_kernel(
    q_ptr,  # [T, Hq, D] at (stride_qt, stride_qh)
    k_cache_ptr,  # [N, S, Hk, D] at (stride_cb, stride_cs, stride_ch); v_cache has the same strides
    v_cache_ptr,
    block_tables_ptr,  # [B, max_blocks] int32 at stride_bt
    context_lens_ptr,  # [B] int32: tokens in the cache after this step
    cu_seqlens_ptr,  # [B + 1] int32 offsets of each sequence's queries in the packed batch
    out_ptr,  # [T, Hq, D] at (stride_ot, stride_oh)
    scale,
    num_seqs,
    group,  # Hq // Hk
    block_size,
    stride_qt,
    stride_qh,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_bt,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    tile = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // group
    # binary search: largest b in [0, num_seqs) with cu[b] // BLOCK_M + b <= tile
    lo = tile * 0
    hi = lo + num_seqs
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        first_tile = tl.load(cu_seqlens_ptr + mid) // BLOCK_M + mid
        go_right = first_tile <= tile
        lo = tl.where(go_right, mid, lo)
        hi = tl.where(go_right, hi, mid)
    seq = lo.to(tl.int64)
    q_start = tl.load(cu_seqlens_ptr + seq)
    q_len = tl.load(cu_seqlens_ptr + seq + 1) - q_start
    m0 = (tile - (q_start // BLOCK_M + lo)) * BLOCK_M  # first query row of this tile
    ctx = tl.load(context_lens_ptr + seq)
    prefix = ctx - q_len  # query j sits at absolute position prefix + j
    m = m0 + tl.arange(0, BLOCK_M)
    m_ok = m < q_len
    q_pos = prefix + m
    d = tl.arange(0, HEAD_DIM)
    q_rows = (q_start + m).to(tl.int64)
    q = tl.load(q_ptr + (q_rows * stride_qt + head * stride_qh)[:, None] + d[None, :], mask=m_ok[:, None], other=0.0)
    if INTERPRET:
        q = q.to(tl.float32)
    qk_scale = scale * 1.4426950408889634
    bt_row = block_tables_ptr + seq * stride_bt
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # keys past the tile's last query position are masked for every row: stop there
    end = tl.where(m0 < q_len, tl.minimum(ctx, prefix + m0 + BLOCK_M), 0)
    n = tl.arange(0, BLOCK_N)
    for start_n in range(0, end, BLOCK_N):
        k_pos = start_n + n
        n_ok = k_pos < end
        offs = paged_kv_offsets(bt_row, k_pos, n_ok, block_size, kv_head, stride_cb, stride_cs, stride_ch)
        k = tl.load(k_cache_ptr + offs[:, None] + d[None, :], mask=n_ok[:, None], other=0.0)
        if INTERPRET:
            k = k.to(tl.float32)
        s = mma(q, tl.trans(k)) * qk_scale
        visible = n_ok[None, :] & (k_pos[None, :] <= q_pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache_ptr + offs[:, None] + d[None, :], mask=n_ok[:, None], other=0.0)
        if INTERPRET:
            acc = acc * alpha[:, None] + mma(p, v.to(tl.float32))
        else:
            acc = acc * alpha[:, None] + mma(p.to(v.dtype), v)
        m_i = m_new
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    dtype: tl.constexpr = out_ptr.dtype.element_ty
    dst = out_ptr + (q_rows * stride_ot + head * stride_oh)[:, None] + d[None, :]
    tl.store(dst, to_dtype(out, dtype, INTERPRET), mask=m_ok[:, None])


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of packed ``q [T, Hq, D]`` over the paged cache; returns a new ``[T, Hq, D]``.

    Sequence ``b`` owns rows ``cu_seqlens_q[b] .. cu_seqlens_q[b+1]-1``; its ``j``-th query is at
    absolute position ``context_lens[b] - q_len_b + j`` and sees cache positions up to it. The
    new tokens' k/v must already be stored. Rows outside ``[0, cu_seqlens_q[B])`` are left unset.
    """
    op = "prefill_attention"
    check_tensor(op, "q", q, ndim=3, dtypes=FLOAT_DTYPES)
    dev = q.device
    check_device(op, dev)
    num_tokens, num_q_heads, head_dim = q.shape
    if head_dim not in CONFIGS:
        raise ConfigError(f"{op}: head_dim={head_dim} not supported; supported: {sorted(CONFIGS)}")
    cfg = CONFIGS[head_dim]
    check_last_dim_contiguous(op, "q", q)
    check_tensor(op, "k_cache", k_cache, ndim=4, dtypes=(q.dtype,), device=dev)
    check_tensor(op, "v_cache", v_cache, ndim=4, dtypes=(q.dtype,), device=dev)
    _, block_size, num_kv_heads, cache_dim = k_cache.shape
    if cache_dim != head_dim:
        raise ValueError(f"{op}: k_cache head_dim {cache_dim} != q head_dim {head_dim}")
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride():
        raise ValueError(f"{op}: v_cache must match k_cache in shape and strides")
    check_last_dim_contiguous(op, "k_cache", k_cache)
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{op}: {num_q_heads} query heads not a multiple of {num_kv_heads} kv heads")
    int_types = (torch.int32, torch.int64)
    check_tensor(op, "cu_seqlens_q", cu_seqlens_q, ndim=1, dtypes=int_types, device=dev)
    check_tensor(op, "context_lens", context_lens, ndim=1, dtypes=int_types, device=dev)
    check_tensor(op, "block_tables", block_tables, ndim=2, dtypes=int_types, device=dev)
    num_seqs = context_lens.shape[0]
    if cu_seqlens_q.shape[0] != num_seqs + 1 or block_tables.shape[0] != num_seqs:
        raise ValueError(
            f"{op}: {num_seqs} sequences but cu_seqlens_q {tuple(cu_seqlens_q.shape)}, "
            f"block_tables {tuple(block_tables.shape)}"
        )
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if num_tokens == 0 or num_seqs == 0 or num_q_heads == 0:
        return out
    cu = cu_seqlens_q.to(torch.int32).contiguous()
    context_lens = context_lens.to(torch.int32).contiguous()
    block_tables = block_tables.to(torch.int32).contiguous()
    grid = (num_tokens // cfg.block_m + num_seqs, num_q_heads)
    _prefill_attention_kernel[grid](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        cu,
        out,
        float(scale),
        num_seqs,
        num_q_heads // num_kv_heads,
        block_size,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        HEAD_DIM=head_dim,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        INTERPRET=interpreting(),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out


def compile_specs() -> list[KernelSpec]:
    specs = []
    ints = ("num_seqs", "group", "block_size")
    strides = ("stride_qt", "stride_qh", "stride_cb", "stride_cs", "stride_ch", "stride_bt", "stride_ot", "stride_oh")
    for head_dim, cfg in CONFIGS.items():
        for dtype in FLOAT_DTYPES:
            p = ptr_sig(dtype)
            sig = {"q_ptr": p, "k_cache_ptr": p, "v_cache_ptr": p, "block_tables_ptr": "*i32"}
            sig.update({"context_lens_ptr": "*i32", "cu_seqlens_ptr": "*i32", "out_ptr": p, "scale": "fp32"})
            sig.update({n: "i32" for n in ints})
            sig.update({n: "i64" for n in strides})
            specs.append(
                KernelSpec(
                    _prefill_attention_kernel,
                    sig,
                    {"HEAD_DIM": head_dim, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "INTERPRET": False},
                    num_warps=cfg.num_warps,
                    num_stages=cfg.num_stages,
                    label=f"D={head_dim} BLOCK_M={cfg.block_m} BLOCK_N={cfg.block_n} {dtype}",
                )
            )
    return specs
