"""Rotary position embedding (Qwen2 / GPT-NeoX rotate-half layout), in place on q and k.

Each program rotates ``BLOCK_R`` (token, head) rows; a row's position picks its cos/sin row
from the ``[max_positions, D]`` float32 cache (cos of the D/2 frequencies, then their sin).
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
    ptr_sig,
    round_to,
    to_dtype,
)
from tritonlm.kernels.dtypes import FLOAT_DTYPES


class RotaryConfig(NamedTuple):
    block_r: int  # (token, head) rows per program
    num_warps: int


# head_dim -> launch config (the only head dims the launcher accepts)
CONFIGS: dict[int, RotaryConfig] = {
    64: RotaryConfig(64, 4),
    128: RotaryConfig(32, 4),
}


@triton.jit
def _rotary_kernel(
    x_ptr,  # [T, H, D] rows at (stride_t, stride_h), last dim contiguous; rotated in place
    pos_ptr,  # [T] int32/int64 absolute positions
    cs_ptr,  # [P, D] float32: cos | sin
    n_rows,  # T * H
    n_heads,
    stride_t,
    stride_h,
    stride_cs,
    HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    HALF: tl.constexpr = HEAD_DIM // 2
    dtype: tl.constexpr = x_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    tok = rows // n_heads
    head = rows % n_heads
    pos = tl.load(pos_ptr + tok, mask=row_ok, other=0).to(tl.int64)
    d = tl.arange(0, HALF)
    mask = row_ok[:, None] & (d[None, :] < HALF)
    cs_row = cs_ptr + pos[:, None] * stride_cs + d[None, :]
    # cos/sin are cast to the activation dtype before use, as the reference (and HF) do
    c = round_to(tl.load(cs_row, mask=mask, other=0.0), dtype, INTERPRET)
    s = round_to(tl.load(cs_row + HALF, mask=mask, other=0.0), dtype, INTERPRET)
    base = x_ptr + tok[:, None] * stride_t + head[:, None] * stride_h + d[None, :]
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
    # each product and difference is rounded to the activation dtype, like torch's op-by-op math
    o1 = round_to(x1 * c, dtype, INTERPRET) - round_to(x2 * s, dtype, INTERPRET)
    o2 = round_to(x2 * c, dtype, INTERPRET) + round_to(x1 * s, dtype, INTERPRET)
    tl.store(base, to_dtype(o1, dtype, INTERPRET), mask=mask)
    tl.store(base + HALF, to_dtype(o2, dtype, INTERPRET), mask=mask)


def _check_x(name: str, x: torch.Tensor, num_tokens: int, head_dim: int, device: torch.device) -> None:
    op = "rotary_embedding"
    check_tensor(op, name, x, ndim=3, dtypes=FLOAT_DTYPES, device=device)
    if x.shape[0] != num_tokens or x.shape[2] != head_dim:
        raise ValueError(f"{op}: {name} has shape {tuple(x.shape)}, expected [{num_tokens}, heads, {head_dim}]")
    check_last_dim_contiguous(op, name, x)


def rotary_embedding(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    """Rotate ``q [T, Hq, D]`` and ``k [T, Hk, D]`` **in place** at ``positions [T]``.

    q and k may be strided views (e.g. slices of a fused qkv projection) as long as their last
    dim is contiguous. ``cos_sin_cache [P, D]`` float32 from ``reference.rope_cos_sin_cache``.
    """
    op = "rotary_embedding"
    check_tensor(op, "q", q, ndim=3)
    check_device(op, q.device)
    num_tokens, _, head_dim = q.shape
    if head_dim not in CONFIGS:
        raise ConfigError(f"{op}: head_dim={head_dim} not supported; supported: {sorted(CONFIGS)}")
    _check_x("q", q, num_tokens, head_dim, q.device)
    _check_x("k", k, num_tokens, head_dim, q.device)
    if k.dtype != q.dtype:
        raise ValueError(f"{op}: q is {q.dtype} but k is {k.dtype}")
    check_tensor(op, "positions", positions, ndim=1, dtypes=(torch.int64, torch.int32), device=q.device)
    if positions.shape[0] != num_tokens:
        raise ValueError(f"{op}: positions has {positions.shape[0]} entries for {num_tokens} tokens")
    check_tensor(op, "cos_sin_cache", cos_sin_cache, ndim=2, dtypes=(torch.float32,), device=q.device)
    if cos_sin_cache.shape[1] != head_dim:
        raise ValueError(f"{op}: cos_sin_cache has shape {tuple(cos_sin_cache.shape)}, expected [P, {head_dim}]")
    check_last_dim_contiguous(op, "cos_sin_cache", cos_sin_cache)
    if num_tokens == 0:
        return
    positions = positions.to(torch.int64).contiguous()
    cfg = CONFIGS[head_dim]
    for x in (q, k):
        n_rows = num_tokens * x.shape[1]
        if n_rows == 0:
            continue
        _rotary_kernel[(triton.cdiv(n_rows, cfg.block_r),)](
            x,
            positions,
            cos_sin_cache,
            n_rows,
            x.shape[1],
            x.stride(0),
            x.stride(1),
            cos_sin_cache.stride(0),
            HEAD_DIM=head_dim,
            BLOCK_R=cfg.block_r,
            INTERPRET=interpreting(),
            num_warps=cfg.num_warps,
        )


def compile_specs() -> list[KernelSpec]:
    specs = []
    for head_dim, cfg in CONFIGS.items():
        for dtype in FLOAT_DTYPES:
            specs.append(
                KernelSpec(
                    _rotary_kernel,
                    {
                        "x_ptr": ptr_sig(dtype),
                        "pos_ptr": "*i64",
                        "cs_ptr": "*fp32",
                        "n_rows": "i32",
                        "n_heads": "i32",
                        "stride_t": "i64",
                        "stride_h": "i64",
                        "stride_cs": "i64",
                    },
                    {"HEAD_DIM": head_dim, "BLOCK_R": cfg.block_r, "INTERPRET": False},
                    num_warps=cfg.num_warps,
                    label=f"D={head_dim} BLOCK_R={cfg.block_r} {dtype}",
                )
            )
    return specs
