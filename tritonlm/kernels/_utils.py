"""Helpers shared by the Triton kernels: launcher checks, the interpreter flag, compile specs.

Every kernel module keeps its launch configurations in one table (``CONFIGS`` or similar)
that both its launcher and :func:`compile_specs` read, so :mod:`tritonlm.kernels.compile_check`
compiles exactly the variants a launcher can pick.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import triton
import triton.language as tl

from tritonlm.config import env

# torch dtype -> Triton signature string (pointer element type)
_SIG_DTYPE: dict[torch.dtype, str] = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.int32: "i32",
    torch.int64: "i64",
}


@functools.cache
def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1).

    Read once: the variable only takes effect before triton is imported, and launchers call
    this on every launch.
    """
    return env().triton_interpret


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def ptr_sig(dtype: torch.dtype) -> str:
    return "*" + _SIG_DTYPE[dtype]


# ---- launcher checks ---------------------------------------------------------------------
def check_tensor(
    op: str,
    name: str,
    t: Any,
    *,
    ndim: int | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    device: torch.device | None = None,
) -> None:
    """Raise ValueError unless ``t`` is a tensor of the given rank, dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None:
        allowed = tuple(dtypes)
        if t.dtype not in allowed:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}, expected one of {allowed}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device}, expected {device} (all inputs on one device)")


def check_device(op: str, device: torch.device) -> None:
    """The Triton backends run on CUDA, or on the CPU only under the interpreter."""
    if device.type == "cuda":
        return
    if device.type == "cpu" and interpreting():
        return
    raise ValueError(
        f"{op}: Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got device {device}"
    )


def check_last_dim_contiguous(op: str, name: str, t: torch.Tensor) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{op}: {name} must be contiguous in its last dim, got strides {t.stride()}")


def check_shape(op: str, name: str, t: torch.Tensor, shape: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


# ---- device code shared by kernels -------------------------------------------------------
@triton.jit
def round_to(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 ``x`` rounded to nearest-even in ``DTYPE``'s precision, returned as fp32.

    The interpreter truncates fp32 -> bf16 conversions, so there the rounding is done on the
    bits (finite values only); on a GPU the conversion itself rounds correctly.
    """
    if INTERPRET and DTYPE == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        u = u + 0x7FFF + ((u >> 16) & 1)
        return ((u >> 16) << 16).to(tl.float32, bitcast=True)
    else:
        return x.to(DTYPE).to(tl.float32)


@triton.jit
def to_dtype(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 ``x`` converted to ``DTYPE`` with round-to-nearest-even, for a store."""
    if INTERPRET and DTYPE == tl.bfloat16:
        return round_to(x, DTYPE, INTERPRET).to(DTYPE)
    else:
        return x.to(DTYPE)


@triton.jit
def mma(a, b):
    """``a @ b`` with fp32 accumulation on tensor cores; fp32 operands use 3xTF32 (about fp32 accuracy)."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="tf32x3")
    else:
        return tl.dot(a, b)


@triton.jit
def paged_kv_offsets(bt_row_ptr, pos, valid, block_size, kv_head, stride_cb, stride_cs, stride_ch):
    """int64 element offsets of cache rows at token positions ``pos`` of one sequence (one kv head).

    ``bt_row_ptr`` points at the sequence's block-table row; invalid positions read block 0.
    """
    blk = tl.load(bt_row_ptr + pos // block_size, mask=valid, other=0).to(tl.int64)
    return blk * stride_cb + (pos % block_size).to(tl.int64) * stride_cs + kv_head.to(tl.int64) * stride_ch


# ---- compile specs ------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelSpec:
    """One compile variant of a kernel: argument types, constexpr values and launch options."""

    fn: Any  # triton.JITFunction
    signature: dict[str, str]  # non-constexpr argument -> Triton type ("*bf16", "i32", "fp32", ...)
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 2
    label: str = field(default="")

    def full_signature(self) -> dict[str, str]:
        """Signature over every kernel argument, in order; fails if the spec misses or adds one."""
        names = list(self.fn.arg_names)
        given = set(self.signature) | set(self.constexprs)
        if given != set(names):
            raise ValueError(f"{self.fn.__name__}: spec args {sorted(given)} do not match kernel args {sorted(names)}")
        return {n: ("constexpr" if n in self.constexprs else self.signature[n]) for n in names}

    def aligned_attrs(self) -> dict[tuple[int, ...], list[list[Any]]]:
        """Divisibility-by-16 hints on every pointer and stride argument.

        Triton's launcher adds exactly these when a pointer is 16-byte aligned and an integer
        is a multiple of 16, which holds for every Qwen2.5 shape (head_dim 64/128, hidden a
        multiple of 128): this is the variant a real launch compiles. Without the hints the
        gathers cannot be vectorised (kv_store and prefill D=128 then spill registers).
        """
        sig = self.full_signature()
        return {
            (i,): [["tt.divisibility", 16]]
            for i, (name, ty) in enumerate(sig.items())
            if ty.startswith("*") or name.startswith("stride")
        }
