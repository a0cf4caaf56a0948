"""Weight-only quantized linear layer: ``x [M, K] @ w.T (+ bias)`` for a :class:`QuantizedWeight`.

One program per (BLOCK_M rows of x, BLOCK_N output columns). Each K step loads a BLOCK_N x
BLOCK_K tile of the integer weights (int8, or uint8 nibble pairs unpacked in registers),
dequantizes it in fp32 with its scales (and offsets), rounds it to x's dtype and feeds
``tl.dot`` with fp32 accumulation; fp32 activations use 3xTF32.

Scales are read per 16 inputs (the smallest group size) and broadcast over those 16, so the
group size is a runtime argument: any power of two >= 16 works with every BLOCK_K in the table
(multiples of 32), including groups longer than BLOCK_K, and the group size adds no compile
variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

from tritonlm.errors import ConfigError
from tritonlm.kernels._utils import (
    KernelSpec,
    check_device,
    check_last_dim_contiguous,
    check_shape,
    check_tensor,
    interpreting,
    mma,
    ptr_sig,
    to_dtype,
)
from tritonlm.kernels.dtypes import FLOAT_DTYPES
from tritonlm.kernels.qweight import QuantizedWeight


class QuantMatmulConfig(NamedTuple):
    max_m: int  # the launcher takes the first entry with M <= max_m, else the last
    block_m: int
    block_n: int
    block_k: int  # a multiple of 32 (scales are read per 16 inputs; a 4-bit row is >= 16 bytes)
    num_warps: int
    num_stages: int


# Decode (M <= 16: a batch of single tokens) is bound by the weight read: narrow N tiles give
# more programs, a long K step and deeper pipelining keep loads in flight. Larger M (prefill)
# reuses each dequantized tile over 64 rows; there every warp of an sm_80 mma needs the whole
# dequantized tile in registers, so the K step is short (BLOCK_K 64 spills in fp32 there).
CONFIGS: tuple[QuantMatmulConfig, ...] = (
    QuantMatmulConfig(16, 16, 32, 128, 4, 4),
    QuantMatmulConfig(1 << 62, 64, 64, 32, 4, 3),
)

MAX_GRID_N = 65535  # grid axis 1 (output column tiles)


def _pick_config(m: int) -> QuantMatmulConfig:
    for cfg in CONFIGS:
        if m <= cfg.max_m:
            return cfg
    return CONFIGS[-1]


@triton.jit
def _quant_matmul_kernel(
    x_ptr,  # [M, K] at stride_xm
    q_ptr,  # int8 [N, K] (BITS 8) or uint8 [N, K // 2] (BITS 4) at stride_qn
    s_ptr,  # fp32 [N, n_groups] contiguous
    o_ptr,  # fp32 [N, n_groups] contiguous (read only when HAS_OFFSET)
    b_ptr,  # [N] (read only when HAS_BIAS)
    out_ptr,  # [M, N] at stride_om
    M,
    N,
    K,
    n_groups,  # K // group_size: the row stride of scales and offsets
    log2_group,
    stride_xm,
    stride_qn,
    stride_om,
    BITS: tl.constexpr,
    HAS_OFFSET: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    # M tiles vary fastest, so programs that share a weight tile run together (L2 reuse)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    rk = tl.arange(0, BLOCK_K)
    NSUB: tl.constexpr = BLOCK_K // 16
    sub = tl.arange(0, NSUB) * 16
    x_rows = x_ptr + rm[:, None] * stride_xm
    q_rows = q_ptr + rn[:, None] * stride_qn
    g_rows = rn[:, None] * n_groups
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & (k < K)[None, :], other=0.0)
        if BITS == 8:
            q = tl.load(q_rows + k[None, :], mask=n_ok[:, None] & (k < K)[None, :], other=0).to(tl.float32)
        else:
            j = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            packed = tl.load(q_rows + j[None, :], mask=n_ok[:, None] & (j < K // 2)[None, :], other=0)
            lo = (packed & 0xF).to(tl.float32)
            hi = ((packed >> 4) & 0xF).to(tl.float32)
            # input 2j is the low nibble, 2j + 1 the high one: interleave along K
            q = tl.reshape(tl.join(lo, hi), [BLOCK_N, BLOCK_K])
        ks = k0 + sub
        g_off = g_rows + (ks >> log2_group)[None, :]
        g_mask = n_ok[:, None] & (ks < K)[None, :]
        s = tl.load(s_ptr + g_off, mask=g_mask, other=0.0)
        w = tl.reshape(q, [BLOCK_N, NSUB, 16]) * s[:, :, None]
        if HAS_OFFSET:
            o = tl.load(o_ptr + g_off, mask=g_mask, other=0.0)
            w = w + o[:, :, None]
        w = tl.reshape(w, [BLOCK_N, BLOCK_K])
        if INTERPRET:
            acc += mma(x.to(tl.float32), tl.trans(w))
        else:
            acc += mma(x, tl.trans(w.to(x.dtype)))
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    dtype: tl.constexpr = out_ptr.dtype.element_ty
    dst = out_ptr + rm[:, None] * stride_om + rn[None, :]
    tl.store(dst, to_dtype(acc, dtype, INTERPRET), mask=m_ok[:, None] & n_ok[None, :])


def _check_weight(op: str, weight: Any, device: torch.device) -> None:
    if not isinstance(weight, QuantizedWeight):
        raise ValueError(f"{op}: weight must be a QuantizedWeight, got {type(weight).__name__}")
    n, k = weight.shape
    check_tensor(op, "weight.qweight", weight.qweight, device=device)
    check_last_dim_contiguous(op, "weight.qweight", weight.qweight)
    for name, t in (("weight.scales", weight.scales), ("weight.offsets", weight.offsets)):
        if t is None:
            continue
        check_tensor(op, name, t, device=device)
        if t.numel() > 0 and not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous, got strides {t.stride()} (see pack_quant_weight)")
    if k >= 2**31 or n >= 2**31:
        raise ConfigError(f"{op}: weight shape {(n, k)} too large (int32 sizes)")


def quant_linear(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, K] @ w.T + bias`` for a weight-only quantized ``w [N, K]``; returns a new ``[M, N]`` in x's dtype.

    ``bias [N]`` in x's dtype or float32. Accumulates in float32; on a GPU the dequantized
    weights are rounded to x's dtype before the tensor-core dot (fp32 x: 3xTF32).
    """
    op = "quant_linear"
    check_tensor(op, "x", x, ndim=2, dtypes=FLOAT_DTYPES)
    dev = x.device
    check_device(op, dev)
    check_last_dim_contiguous(op, "x", x)
    _check_weight(op, weight, dev)
    n, k = weight.shape
    m = x.shape[0]
    if x.shape[1] != k:
        raise ValueError(f"{op}: x has shape {tuple(x.shape)}, expected [M, {k}] for a weight of shape {(n, k)}")
    if bias is not None:
        check_tensor(op, "bias", bias, ndim=1, dtypes=(x.dtype, torch.float32), device=dev)
        check_shape(op, "bias", bias, (n,))
        check_last_dim_contiguous(op, "bias", bias)
    cfg = _pick_config(m)
    grid_n = triton.cdiv(n, cfg.block_n)
    if grid_n > MAX_GRID_N:
        raise ConfigError(f"{op}: N={n} needs {grid_n} column tiles, above the grid limit {MAX_GRID_N}")
    out = torch.empty((m, n), dtype=x.dtype, device=dev)
    if m == 0 or n == 0:
        return out
    scales = weight.scales
    offsets = weight.offsets
    _quant_matmul_kernel[(triton.cdiv(m, cfg.block_m), grid_n)](
        x,
        weight.qweight,
        scales,
        offsets if offsets is not None else scales,
        bias if bias is not None else scales,
        out,
        m,
        n,
        k,
        k // weight.group_size,
        weight.group_size.bit_length() - 1,
        x.stride(0),
        weight.qweight.stride(0),
        out.stride(0),
        BITS=weight.bits,
        HAS_OFFSET=offsets is not None,
        HAS_BIAS=bias is not None,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        INTERPRET=interpreting(),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out


def pack_quant_weight(weight: QuantizedWeight) -> QuantizedWeight:
    """The layout :func:`quant_linear` reads: the :mod:`~tritonlm.kernels.qweight` layout itself,
    with every tensor made contiguous (the same object when it already is)."""
    parts = (weight.qweight, weight.scales, weight.offsets)
    if all(t is None or t.is_contiguous() for t in parts):
        return weight
    offsets = None if weight.offsets is None else weight.offsets.contiguous()
    return QuantizedWeight(
        weight.qweight.contiguous(), weight.scales.contiguous(), offsets, weight.bits, weight.group_size
    )


@dataclass(frozen=True)
class _QuantSpec(KernelSpec):
    """Also hints N and K as multiples of 16, as a launch with a Qwen2.5 matrix gets them (K is
    in the inner-loop masks, so without it the weight loads are not vectorised). The scale row
    stride ``n_groups`` is not hinted: K // 32 is 28 for the 0.5B model."""

    def aligned_attrs(self) -> dict[tuple[int, ...], list[list[Any]]]:
        attrs = super().aligned_attrs()
        for i, name in enumerate(self.fn.arg_names):
            if name in ("N", "K"):
                attrs[(i,)] = [["tt.divisibility", 16]]
        return attrs


def compile_specs() -> list[KernelSpec]:
    specs: list[KernelSpec] = []
    ints = ("M", "N", "K", "n_groups", "log2_group")
    for cfg in CONFIGS:
        for dtype in FLOAT_DTYPES:
            p = ptr_sig(dtype)
            for bits in (4, 8):
                for has_offset in (False, True):
                    # bias: none, in x's dtype, or float32
                    for bias_dtype in dict.fromkeys((None, dtype, torch.float32)):
                        sig = {"x_ptr": p, "q_ptr": "*i8" if bits == 8 else "*u8", "s_ptr": "*fp32"}
                        sig.update({"o_ptr": "*fp32", "b_ptr": "*fp32" if bias_dtype is None else ptr_sig(bias_dtype)})
                        sig["out_ptr"] = p
                        sig.update({n: "i32" for n in ints})
                        sig.update({n: "i64" for n in ("stride_xm", "stride_qn", "stride_om")})
                        specs.append(
                            _QuantSpec(
                                _quant_matmul_kernel,
                                sig,
                                {
                                    "BITS": bits,
                                    "HAS_OFFSET": has_offset,
                                    "HAS_BIAS": bias_dtype is not None,
                                    "BLOCK_M": cfg.block_m,
                                    "BLOCK_N": cfg.block_n,
                                    "BLOCK_K": cfg.block_k,
                                    "INTERPRET": False,
                                },
                                num_warps=cfg.num_warps,
                                num_stages=cfg.num_stages,
                                label=(
                                    f"BLOCK_M={cfg.block_m} BLOCK_N={cfg.block_n} BLOCK_K={cfg.block_k} {dtype} "
                                    f"bits={bits} offset={has_offset} bias={bias_dtype}"
                                ),
                            )
                        )
    return specs
