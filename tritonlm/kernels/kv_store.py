"""Paged KV store: scatter new k/v rows into the block-layout caches through a slot mapping."""

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
    ptr_sig,
)
from tritonlm.kernels.dtypes import FLOAT_DTYPES


class KVStoreConfig(NamedTuple):
    block_r: int  # (token, kv head) rows per program
    num_warps: int


# head_dim -> launch config (the only head dims the launcher accepts)
CONFIGS: dict[int, KVStoreConfig] = {
    64: KVStoreConfig(64, 4),
    128: KVStoreConfig(32, 4),
}


@triton.jit
def _kv_store_kernel(
    k_ptr,  # [T, Hk, D] rows at (stride_kt, stride_kh), last dim contiguous
    v_ptr,  # [T, Hk, D] rows at (stride_vt, stride_vh)
    k_cache_ptr,  # [N, S, Hk, D] written in place
    v_cache_ptr,  # [N, S, Hk, D] same strides as k_cache
    slot_ptr,  # [T] int64 flat slots; < 0 means padding (nothing written)
    n_rows,  # T * Hk
    n_heads,
    block_size,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cb,
    stride_cs,
    stride_ch,
    HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    INTERPRET: tl.constexpr,  # a pure copy: nothing to upcast; kept for a uniform kernel interface
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    tok = rows // n_heads
    head = rows % n_heads
    slot = tl.load(slot_ptr + tok, mask=row_ok, other=-1).to(tl.int64)
    row_ok = row_ok & (slot >= 0)
    blk = slot // block_size
    off = slot % block_size
    d = tl.arange(0, HEAD_DIM)
    mask = row_ok[:, None] & (d[None, :] < HEAD_DIM)
    dst = (blk * stride_cb + off * stride_cs + head * stride_ch)[:, None] + d[None, :]
    kv_dtype: tl.constexpr = k_cache_ptr.dtype.element_ty
    k = tl.load(k_ptr + (tok * stride_kt + head * stride_kh)[:, None] + d[None, :], mask=mask)
    tl.store(k_cache_ptr + dst, k.to(kv_dtype), mask=mask)
    v = tl.load(v_ptr + (tok * stride_vt + head * stride_vh)[:, None] + d[None, :], mask=mask)
    tl.store(v_cache_ptr + dst, v.to(kv_dtype), mask=mask)


def store_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write ``k, v [T, Hk, D]`` into ``k_cache, v_cache [N, S, Hk, D]`` at ``slot_mapping [T]``, **in place**.

    Slot ``s`` is block ``s // S``, offset ``s % S``; -1 writes nothing. k/v may be strided
    views with a contiguous last dim; they must have the caches' dtype. Slots are not range
    checked (that would need a device sync): the caller guarantees ``s < N * S``.
    """
    op = "store_kv_cache"
    check_tensor(op, "k_cache", k_cache, ndim=4, dtypes=FLOAT_DTYPES)
    dev = k_cache.device
    check_device(op, dev)
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    if head_dim not in CONFIGS:
        raise ConfigError(f"{op}: head_dim={head_dim} not supported; supported: {sorted(CONFIGS)}")
    check_tensor(op, "v_cache", v_cache, ndim=4, dtypes=(k_cache.dtype,), device=dev)
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride():
        raise ValueError(f"{op}: v_cache {tuple(v_cache.shape)} must match k_cache {tuple(k_cache.shape)} and strides")
    check_last_dim_contiguous(op, "k_cache", k_cache)
    num_tokens = slot_mapping.shape[0] if slot_mapping.dim() == 1 else -1
    check_tensor(op, "slot_mapping", slot_mapping, ndim=1, dtypes=(torch.int64, torch.int32), device=dev)
    for name, x in (("k", k), ("v", v)):
        check_tensor(op, name, x, ndim=3, dtypes=(k_cache.dtype,), device=dev)
        if tuple(x.shape) != (num_tokens, num_kv_heads, head_dim):
            raise ValueError(
                f"{op}: {name} has shape {tuple(x.shape)}, expected ({num_tokens}, {num_kv_heads}, {head_dim})"
            )
        check_last_dim_contiguous(op, name, x)
    n_rows = num_tokens * num_kv_heads
    if n_rows == 0:
        return
    cfg = CONFIGS[head_dim]
    _kv_store_kernel[(triton.cdiv(n_rows, cfg.block_r),)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping.to(torch.int64).contiguous(),
        n_rows,
        num_kv_heads,
        block_size,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        HEAD_DIM=head_dim,
        BLOCK_R=cfg.block_r,
        INTERPRET=interpreting(),
        num_warps=cfg.num_warps,
    )


def compile_specs() -> list[KernelSpec]:
    specs = []
    for head_dim, cfg in CONFIGS.items():
        for dtype in FLOAT_DTYPES:
            p = ptr_sig(dtype)
            sig = {"k_ptr": p, "v_ptr": p, "k_cache_ptr": p, "v_cache_ptr": p, "slot_ptr": "*i64"}
            sig.update({n: "i32" for n in ("n_rows", "n_heads", "block_size")})
            sig.update(
                {
                    n: "i64"
                    for n in ("stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_cb", "stride_cs", "stride_ch")
                }
            )
            specs.append(
                KernelSpec(
                    _kv_store_kernel,
                    sig,
                    {"HEAD_DIM": head_dim, "BLOCK_R": cfg.block_r, "INTERPRET": False},
                    num_warps=cfg.num_warps,
                    label=f"D={head_dim} BLOCK_R={cfg.block_r} {dtype}",
                )
            )
    return specs
