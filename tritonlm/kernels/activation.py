"""SiLU-and-multiply for the gated MLP: ``silu(x[..., :I]) * x[..., I:]``."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

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


class ActivationConfig(NamedTuple):
    block: int  # output columns per program
    num_warps: int


CONFIG = ActivationConfig(1024, 4)


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,  # [R, 2I] rows at stride_x, last dim contiguous
    out_ptr,  # [R, I] rows at stride_out
    inter,  # I
    stride_x,
    stride_out,
    BLOCK: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    dtype: tl.constexpr = out_ptr.dtype.element_ty
    x_row = x_ptr + row * stride_x
    gate = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_row + inter + cols, mask=mask, other=0.0).to(tl.float32)
    # silu is rounded to the activation dtype before the product, as torch computes it
    act = round_to(gate / (1.0 + tl.exp(-gate)), dtype, INTERPRET)
    tl.store(out_ptr + row * stride_out + cols, to_dtype(act * up, dtype, INTERPRET), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``x [..., 2I]`` -> new ``[..., I]`` in x's dtype."""
    op = "silu_and_mul"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES)
    check_device(op, x.device)
    if x.dim() < 1 or x.shape[-1] % 2:
        raise ValueError(f"{op}: x must have an even last dim, got shape {tuple(x.shape)}")
    check_last_dim_contiguous(op, "x", x)
    inter = x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], inter), dtype=x.dtype, device=x.device)
    x2 = x.reshape(-1, 2 * inter)
    out2 = out.view(-1, inter)
    if x2.shape[0] == 0 or inter == 0:
        return out
    _silu_and_mul_kernel[(x2.shape[0], triton.cdiv(inter, CONFIG.block))](
        x2,
        out2,
        inter,
        x2.stride(0),
        out2.stride(0),
        BLOCK=CONFIG.block,
        INTERPRET=interpreting(),
        num_warps=CONFIG.num_warps,
    )
    return out


def compile_specs() -> list[KernelSpec]:
    return [
        KernelSpec(
            _silu_and_mul_kernel,
            {"x_ptr": ptr_sig(dt), "out_ptr": ptr_sig(dt), "inter": "i32", "stride_x": "i64", "stride_out": "i64"},
            {"BLOCK": CONFIG.block, "INTERPRET": False},
            num_warps=CONFIG.num_warps,
            label=f"BLOCK={CONFIG.block} {dt}",
        )
        for dt in FLOAT_DTYPES
    ]
