"""RMSNorm and the fused residual-add + RMSNorm (one program per row, fp32 statistics)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tritonlm.kernels._utils import (
    KernelSpec,
    check_device,
    check_last_dim_contiguous,
    check_shape,
    check_tensor,
    interpreting,
    ptr_sig,
    round_to,
    to_dtype,
)
from tritonlm.kernels.dtypes import FLOAT_DTYPES


class RmsNormConfig(NamedTuple):
    block_n: int  # columns per chunk (power of 2)
    one_pass: bool  # the whole row fits one chunk: load once, keep it in registers
    num_warps: int


# The launcher takes the first one-pass entry whose block covers the row, else the last
# (looping) entry. Rows of Qwen2.5: 896 (0.5B) .. 8192 (72B).
CONFIGS: tuple[RmsNormConfig, ...] = (
    RmsNormConfig(1024, True, 4),
    RmsNormConfig(4096, True, 8),
    RmsNormConfig(4096, False, 8),
)


def _pick_config(n_cols: int) -> RmsNormConfig:
    for cfg in CONFIGS:
        if cfg.one_pass and cfg.block_n >= n_cols:
            return cfg
    return CONFIGS[-1]


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [R, N] rows at stride_x
    res_ptr,  # [R, N] residual (read only when HAS_RESIDUAL)
    w_ptr,  # [N]
    out_ptr,  # [R, N] normed output
    res_out_ptr,  # [R, N] x + residual (written only when HAS_RESIDUAL)
    n_cols,
    stride_x,
    stride_res,
    stride_out,
    stride_res_out,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ONE_PASS: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    dtype: tl.constexpr = out_ptr.dtype.element_ty
    x_row = x_ptr + row * stride_x
    res_row = res_ptr + row * stride_res
    out_row = out_ptr + row * stride_out
    res_out_row = res_out_ptr + row * stride_res_out
    cols = tl.arange(0, BLOCK_N)
    if ONE_PASS:
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            r = tl.load(res_row + cols, mask=mask, other=0.0).to(tl.float32)
            # the sum is rounded to the activation dtype before the norm reads it (as in torch)
            x = round_to(x + r, dtype, INTERPRET)
            tl.store(res_out_row + cols, x.to(dtype), mask=mask)
        rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        y = w * round_to(x * rstd, dtype, INTERPRET)
        tl.store(out_row + cols, to_dtype(y, dtype, INTERPRET), mask=mask)
    else:
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            mask = c < n_cols
            x = tl.load(x_row + c, mask=mask, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                r = tl.load(res_row + c, mask=mask, other=0.0).to(tl.float32)
                x = round_to(x + r, dtype, INTERPRET)
                tl.store(res_out_row + c, x.to(dtype), mask=mask)
            acc += x * x
        rstd = tl.rsqrt(tl.sum(acc, axis=0) / n_cols + eps)
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            mask = c < n_cols
            # recompute x + residual from the inputs rather than reading res_out back
            x = tl.load(x_row + c, mask=mask, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                r = tl.load(res_row + c, mask=mask, other=0.0).to(tl.float32)
                x = round_to(x + r, dtype, INTERPRET)
            w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
            y = w * round_to(x * rstd, dtype, INTERPRET)
            tl.store(out_row + c, to_dtype(y, dtype, INTERPRET), mask=mask)


def _check(op: str, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> None:
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES)
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least 1 dim, got a scalar")
    check_device(op, x.device)
    check_last_dim_contiguous(op, "x", x)
    check_tensor(op, "weight", weight, ndim=1, dtypes=(x.dtype,), device=x.device)
    check_shape(op, "weight", weight, (x.shape[-1],))
    check_last_dim_contiguous(op, "weight", weight)
    if residual is not None:
        check_tensor(op, "residual", residual, dtypes=(x.dtype,), device=x.device)
        check_shape(op, "residual", residual, x.shape)
        check_last_dim_contiguous(op, "residual", residual)


def _launch(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    r2 = residual.reshape(-1, n) if residual is not None else x2
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else None
    out2 = out.view(-1, n)
    ro2 = res_out.view(-1, n) if res_out is not None else out2
    rows = x2.shape[0]
    if rows == 0 or n == 0:
        return out, res_out
    cfg = _pick_config(n)
    _rms_norm_kernel[(rows,)](
        x2,
        r2,
        weight,
        out2,
        ro2,
        n,
        x2.stride(0),
        r2.stride(0),
        out2.stride(0),
        ro2.stride(0),
        float(eps),
        HAS_RESIDUAL=residual is not None,
        BLOCK_N=cfg.block_n,
        ONE_PASS=cfg.one_pass,
        INTERPRET=interpreting(),
        num_warps=cfg.num_warps,
    )
    return out, res_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x [..., N] * rsqrt(mean(x^2) + eps) * weight [N]``; returns a new tensor in x's dtype."""
    _check("rms_norm", x, weight, None)
    out, _ = _launch(x, None, weight, eps)
    return out


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns new ``(x + residual, rms_norm(x + residual))``; inputs are not modified."""
    _check("fused_add_rms_norm", x, weight, residual)
    out, res_out = _launch(x, residual, weight, eps)
    assert res_out is not None
    return res_out, out


def compile_specs() -> list[KernelSpec]:
    specs = []
    for cfg in CONFIGS:
        for dtype in FLOAT_DTYPES:
            for has_res in (False, True):
                p = ptr_sig(dtype)
                specs.append(
                    KernelSpec(
                        _rms_norm_kernel,
                        {
                            "x_ptr": p,
                            "res_ptr": p,
                            "w_ptr": p,
                            "out_ptr": p,
                            "res_out_ptr": p,
                            "n_cols": "i32",
                            "stride_x": "i64",
                            "stride_res": "i64",
                            "stride_out": "i64",
                            "stride_res_out": "i64",
                            "eps": "fp32",
                        },
                        {
                            "HAS_RESIDUAL": has_res,
                            "BLOCK_N": cfg.block_n,
                            "ONE_PASS": cfg.one_pass,
                            "INTERPRET": False,
                        },
                        num_warps=cfg.num_warps,
                        label=f"BLOCK_N={cfg.block_n} one_pass={cfg.one_pass} {dtype} residual={has_res}",
                    )
                )
    return specs
