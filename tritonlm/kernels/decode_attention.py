"""Paged decode attention: one query token per sequence over its paged KV cache.

One program per (sequence, kv head[, KV split]) handles all ``Hq // Hk`` query heads of that kv
head at once (padded to ``block_g`` rows for ``tl.dot``), so each K/V tile is read once per kv
head. Online softmax in fp32 (exp2 with log2(e) folded into the scale). The split-KV variant
cuts the context into ``partition`` token ranges, writes per-split fp32 partial outputs with
their running max and sum, and a second kernel merges them: it keeps a GPU busy when
``batch * kv_heads`` is small and contexts are long.
"""

from __future__ import annotations

import math
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

LOG2E = 1.4426950408889634


class DecodeConfig(NamedTuple):
    block_n: int  # KV tokens per inner iteration
    block_g: int  # query heads per kv head, padded (>= 16: tl.dot's minimum M)
    partition: int  # tokens per split in split-KV mode (a multiple of block_n)
    num_warps: int
    num_stages: int


# head_dim -> launch config (the only head dims the launcher accepts); max q/kv ratio = block_g
CONFIGS: dict[int, DecodeConfig] = {
    64: DecodeConfig(64, 16, 256, 4, 1),
    128: DecodeConfig(32, 16, 256, 4, 1),
}
# split KV automatically when fewer programs than this would run without it ...
SPLIT_MAX_PROGRAMS = 128
# ... and the block tables can hold more tokens than this
SPLIT_MIN_CONTEXT = 1024
REDUCE_NUM_WARPS = 2


@triton.jit
def _paged_decode_kernel(
    q_ptr,  # [B, Hq, D] at (stride_qb, stride_qh)
    k_cache_ptr,  # [N, S, Hk, D] at (stride_cb, stride_cs, stride_ch); v_cache has the same strides
    v_cache_ptr,
    block_tables_ptr,  # [B, max_blocks] int32 at stride_bt
    context_lens_ptr,  # [B] int32
    out_ptr,  # [B, Hq, D] at (stride_ob, stride_oh), written when not SPLIT
    part_o_ptr,  # [B, Hq, num_splits, D] fp32, written when SPLIT (normalised per split)
    part_m_ptr,  # [B, Hq, num_splits] fp32 running max (log2 domain)
    part_l_ptr,  # [B, Hq, num_splits] fp32 softmax denominator
    scale,
    group,  # Hq // Hk
    num_q_heads,
    num_splits,
    block_size,
    stride_qb,
    stride_qh,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_bt,
    stride_ob,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_G: tl.constexpr,
    PARTITION: tl.constexpr,
    SPLIT: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(context_lens_ptr + seq)
    if SPLIT:
        start = split * PARTITION
        end = tl.minimum(start + PARTITION, ctx)
    else:
        start = 0
        end = ctx
    g = tl.arange(0, BLOCK_G)
    g_ok = g < group
    head = kv_head * group + g
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(
        q_ptr + seq * stride_qb + head[:, None].to(tl.int64) * stride_qh + d[None, :], mask=g_ok[:, None], other=0.0
    )
    if INTERPRET:
        q = q.to(tl.float32)
    qk_scale = scale * 1.4426950408889634
    bt_row = block_tables_ptr + seq * stride_bt
    m_i = tl.full([BLOCK_G], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
    n = tl.arange(0, BLOCK_N)
    for start_n in range(start, end, BLOCK_N):
        pos = start_n + n
        n_ok = pos < end
        offs = paged_kv_offsets(bt_row, pos, n_ok, block_size, kv_head, stride_cb, stride_cs, stride_ch)
        k = tl.load(k_cache_ptr + offs[:, None] + d[None, :], mask=n_ok[:, None], other=0.0)
        if INTERPRET:
            k = k.to(tl.float32)
        s = mma(q, tl.trans(k)) * qk_scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
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
    # an empty context yields zeros rather than 0/0
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    if SPLIT:
        row = (seq * num_q_heads + head) * num_splits + split  # [BLOCK_G] int64
        ok = g_ok & (start < ctx)
        tl.store(part_o_ptr + row[:, None] * HEAD_DIM + d[None, :], out, mask=ok[:, None])
        tl.store(part_m_ptr + row, m_i, mask=ok)
        tl.store(part_l_ptr + row, l_i, mask=ok)
    else:
        dtype: tl.constexpr = out_ptr.dtype.element_ty
        dst = out_ptr + seq * stride_ob + head[:, None].to(tl.int64) * stride_oh + d[None, :]
        tl.store(dst, to_dtype(out, dtype, INTERPRET), mask=g_ok[:, None])


@triton.jit
def _paged_decode_reduce_kernel(
    part_o_ptr,  # [B, Hq, num_splits, D] fp32
    part_m_ptr,  # [B, Hq, num_splits] fp32
    part_l_ptr,  # [B, Hq, num_splits] fp32
    context_lens_ptr,  # [B] int32
    out_ptr,  # [B, Hq, D] at (stride_ob, stride_oh)
    num_q_heads,
    num_splits,
    stride_ob,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    PARTITION: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    ctx = tl.load(context_lens_ptr + seq)
    used = tl.cdiv(ctx, PARTITION)  # splits that hold tokens of this sequence
    row0 = (seq * num_q_heads + head) * num_splits
    d = tl.arange(0, HEAD_DIM)
    # merge the splits online: rescale by 2^(m_s - m) and weight each by its denominator
    m_run = tl.max(tl.full([2], -1.0e30, dtype=tl.float32), axis=0)
    l_run = tl.sum(tl.zeros([2], dtype=tl.float32), axis=0)
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for s in range(0, used):
        m_s = tl.load(part_m_ptr + row0 + s)
        l_s = tl.load(part_l_ptr + row0 + s)
        o_s = tl.load(part_o_ptr + (row0 + s) * HEAD_DIM + d)
        m_new = tl.maximum(m_run, m_s)
        alpha = tl.exp2(m_run - m_new)
        w = tl.exp2(m_s - m_new) * l_s
        acc = acc * alpha + w * o_s
        l_run = l_run * alpha + w
        m_run = m_new
    out = acc / tl.where(l_run > 0.0, l_run, 1.0)
    dtype: tl.constexpr = out_ptr.dtype.element_ty
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + d, to_dtype(out, dtype, INTERPRET))


def _use_split(num_seqs: int, num_kv_heads: int, max_tokens: int) -> bool:
    return num_seqs * num_kv_heads < SPLIT_MAX_PROGRAMS and max_tokens > SPLIT_MIN_CONTEXT


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    *,
    split_kv: bool | None = None,
) -> torch.Tensor:
    """``q [B, Hq, D]`` attends to ``context_lens[b]`` cached tokens; returns a new ``[B, Hq, D]``.

    ``k_cache, v_cache [N, S, Hk, D]`` (q's dtype); ``block_tables [B, max_blocks]`` and
    ``context_lens [B]`` integer tensors. ``split_kv``: force the split-KV path on or off
    (default: by batch size and the block tables' capacity; never syncs with the device).
    """
    op = "paged_decode_attention"
    check_tensor(op, "q", q, ndim=3, dtypes=FLOAT_DTYPES)
    dev = q.device
    check_device(op, dev)
    num_seqs, num_q_heads, head_dim = q.shape
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
    group = num_q_heads // num_kv_heads
    if group > cfg.block_g:
        raise ConfigError(f"{op}: q/kv head ratio {group} above the supported {cfg.block_g}")
    check_tensor(op, "block_tables", block_tables, ndim=2, dtypes=(torch.int32, torch.int64), device=dev)
    check_tensor(op, "context_lens", context_lens, ndim=1, dtypes=(torch.int32, torch.int64), device=dev)
    if block_tables.shape[0] != num_seqs or context_lens.shape[0] != num_seqs:
        raise ValueError(
            f"{op}: {num_seqs} sequences but block_tables {tuple(block_tables.shape)}, "
            f"context_lens {tuple(context_lens.shape)}"
        )
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if num_seqs == 0 or num_q_heads == 0:
        return out
    block_tables = block_tables.to(torch.int32).contiguous()
    context_lens = context_lens.to(torch.int32).contiguous()
    max_tokens = block_tables.shape[1] * block_size  # an upper bound of every context length
    split = _use_split(num_seqs, num_kv_heads, max_tokens) if split_kv is None else bool(split_kv)
    num_splits = max(1, math.ceil(max_tokens / cfg.partition)) if split else 1
    if split:
        part_o = torch.empty((num_seqs, num_q_heads, num_splits, head_dim), dtype=torch.float32, device=dev)
        part_m = torch.empty((num_seqs, num_q_heads, num_splits), dtype=torch.float32, device=dev)
        part_l = torch.empty_like(part_m)
    else:
        part_o = part_m = part_l = torch.empty(1, dtype=torch.float32, device=dev)
    interp = interpreting()
    _paged_decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        out,
        part_o,
        part_m,
        part_l,
        float(scale),
        group,
        num_q_heads,
        num_splits,
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
        BLOCK_N=cfg.block_n,
        BLOCK_G=cfg.block_g,
        PARTITION=cfg.partition,
        SPLIT=split,
        INTERPRET=interp,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    if split:
        _paged_decode_reduce_kernel[(num_seqs, num_q_heads)](
            part_o,
            part_m,
            part_l,
            context_lens,
            out,
            num_q_heads,
            num_splits,
            out.stride(0),
            out.stride(1),
            HEAD_DIM=head_dim,
            PARTITION=cfg.partition,
            INTERPRET=interp,
            num_warps=REDUCE_NUM_WARPS,
        )
    return out


def compile_specs() -> list[KernelSpec]:
    specs = []
    ints = ("group", "num_q_heads", "num_splits", "block_size")
    strides = ("stride_qb", "stride_qh", "stride_cb", "stride_cs", "stride_ch", "stride_bt", "stride_ob", "stride_oh")
    for head_dim, cfg in CONFIGS.items():
        for dtype in FLOAT_DTYPES:
            p = ptr_sig(dtype)
            sig = {"q_ptr": p, "k_cache_ptr": p, "v_cache_ptr": p, "block_tables_ptr": "*i32"}
            sig.update({"context_lens_ptr": "*i32", "out_ptr": p, "part_o_ptr": "*fp32"})
            sig.update({"part_m_ptr": "*fp32", "part_l_ptr": "*fp32", "scale": "fp32"})
            sig.update({n: "i32" for n in ints})
            sig.update({n: "i64" for n in strides})
            for split in (False, True):
                specs.append(
                    KernelSpec(
                        _paged_decode_kernel,
                        sig,
                        {
                            "HEAD_DIM": head_dim,
                            "BLOCK_N": cfg.block_n,
                            "BLOCK_G": cfg.block_g,
                            "PARTITION": cfg.partition,
                            "SPLIT": split,
                            "INTERPRET": False,
                        },
                        num_warps=cfg.num_warps,
                        num_stages=cfg.num_stages,
                        label=f"D={head_dim} BLOCK_N={cfg.block_n} BLOCK_G={cfg.block_g} split={split} {dtype}",
                    )
                )
            rsig = {"part_o_ptr": "*fp32", "part_m_ptr": "*fp32", "part_l_ptr": "*fp32", "context_lens_ptr": "*i32"}
            rsig.update(
                {"out_ptr": p, "num_q_heads": "i32", "num_splits": "i32", "stride_ob": "i64", "stride_oh": "i64"}
            )
            specs.append(
                KernelSpec(
                    _paged_decode_reduce_kernel,
                    rsig,
                    {"HEAD_DIM": head_dim, "PARTITION": cfg.partition, "INTERPRET": False},
                    num_warps=REDUCE_NUM_WARPS,
                    label=f"D={head_dim} partition={cfg.partition} {dtype}",
                )
            )
    return specs
