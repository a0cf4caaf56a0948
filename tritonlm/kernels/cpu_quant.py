"""Weight-only quantized linear for the CPU: a C++ kernel (``csrc/quant_gemm.cpp``) loaded with ctypes.

``pack(weight)`` repacks a :class:`~tritonlm.kernels.qweight.QuantizedWeight` once into the
kernel's tiled layout; ``linear(x, packed, bias)`` computes ``x @ w.T + bias`` from it. The layout
is a compact one where that holds the weight exactly and decodes faster (:func:`choose_layout`):
5- or 6-bit values when every value of an 8-bit weight without offsets fits (GGUF Q5_0: -16..15,
Q6_K: -32..31), float16 scales for 5-bit values when every scale is exactly a float16 (Q5_0).
The results are the same bits as from the plain int8 (or 4-bit) + float32-scale layout.

Each row of ``x`` is quantized to int8 per block of ``min(G, 32)`` inputs (scale ``amax / 127``),
the integer dot products per block run on AVX-512 VNNI (``vpdpbusd``) where the compiler targets
it (else AVX2 ``vpmaddubsw``, else portable C++), and the per-block float32 scale-and-sum runs in
a fixed order, so a row's result is the same bits whatever the other rows of the batch (batch
invariance).

The error against the float reference is that of the activation quantization: about 1e-2 of the
output's max-norm (half a quantization step, ``amax / 254`` per input, summed over K).

Build: :mod:`tritonlm.kernels._native` (the package's one build path) compiles the source at
first use into ``env().cache_dir / "kernels" / quant_gemm-<hash> / quant_gemm.so``, linked against
torch's own OpenMP runtime; the kernel runs on ``torch.get_num_threads()`` threads.
:func:`available` is False (and callers fall back to :func:`tritonlm.kernels.reference.quant_linear`)
when there is no compiler or the build fails; importing this module never compiles anything and
never raises. ``SOURCE`` and ``COMPILER`` are read at each call (tests point them elsewhere).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tritonlm.errors import ConfigError
from tritonlm.kernels import _native
from tritonlm.kernels._native import COMPILE_FLAGS, COMPILER
from tritonlm.kernels._native import NativeUnavailable as CpuKernelUnavailable
from tritonlm.kernels.qweight import QuantizedWeight

SOURCE = _native.CSRC / "quant_gemm.cpp"
NAME = "quant_gemm"
LIB_NAME = f"{NAME}.so"
ABI_VERSION = 3  # must match ABI_VERSION in the source
HUGE_PAGES = True  # madvise(MADV_HUGEPAGE) packed matrices of >= 4 MiB (fewer TLB misses when streamed)


# ---- build and load (through tritonlm.kernels._native) ----------------------------------------------
def library_path(flags: Sequence[str] = COMPILE_FLAGS) -> Path:
    """Where the kernel built with ``flags`` lives (see :func:`tritonlm.kernels._native.library_path`)."""
    return _native.library_path(SOURCE, NAME, flags, COMPILER)


def build(flags: Sequence[str] = COMPILE_FLAGS) -> Path:
    """Compile the kernel with ``flags`` unless the cache has it; the path of the shared library
    (see :func:`tritonlm.kernels._native.build`). Raises CpuKernelUnavailable."""
    return _native.build(SOURCE, NAME, flags, COMPILER)


_i64, _i32, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p


class _Library:
    """The loaded kernel library with its C signatures declared."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        lib.qg_abi_version.restype = _i32
        lib.qg_abi_version.argtypes = []
        if lib.qg_abi_version() != ABI_VERSION:
            raise CpuKernelUnavailable(f"{path}: ABI version {lib.qg_abi_version()}, expected {ABI_VERSION}")
        for fn_name, restype, argtypes in (
            ("qg_isa", ctypes.c_char_p, []),
            ("qg_tile_rows", _i32, []),
            ("qg_max_threads", _i32, []),
            ("qg_advise_hugepages", _i32, [_ptr, _i64]),
            ("qg_has_layout", _i32, [_i32, _i32, _i32, _i32]),
            ("qg_packed_bytes", _i64, [_i64, _i64, _i32, _i32, _i32, _i32]),
            ("qg_pack", _i32, [_ptr, _i32, _ptr, _ptr, _i64, _i64, _i32, _i32, _i32, _ptr, _i32]),
            ("qg_linear", _i32, [
                _ptr, _i32, _i64, _i64, _i64, _ptr, _i64, _i32, _i32, _i32, _i32, _ptr, _i32, _ptr, _i32, _i64, _i32,
            ]),
        ):  # fmt: skip
            fn = getattr(lib, fn_name)
            fn.restype = restype
            fn.argtypes = argtypes
        self.path = path
        self.lib = lib
        self.isa: str = lib.qg_isa().decode()
        self.tile_rows: int = lib.qg_tile_rows()
        self.linear_fn = lib.qg_linear

    def __repr__(self) -> str:
        return f"_Library({str(self.path)!r}, isa={self.isa!r})"


def load(flags: Sequence[str] = COMPILE_FLAGS) -> _Library:
    """The kernel library built with ``flags`` (built on first use); raises CpuKernelUnavailable.

    A failure is remembered (by :func:`tritonlm.kernels._native.load`), so a missing compiler is
    probed once per process."""
    flags = tuple(flags)
    return _bind(_native.load(SOURCE, NAME, flags, COMPILER), SOURCE, flags, COMPILER)


@functools.cache
def _bind(lib: ctypes.CDLL, source: Path, flags: tuple[str, ...], compiler: str) -> _Library:
    """One :class:`_Library` per loaded CDLL (the others are its cache key's parts)."""
    return _Library(lib, _native.library_path(source, NAME, flags, compiler))


FALLBACK = "quantized matmul falls back to the torch reference (slower)"


def available() -> bool:
    """True when the kernel builds (or is cached) and loads on this machine; never raises.
    A failure is logged once, at WARNING, with the reason (:func:`_native.log_fallback`)."""
    try:
        load()
    except Exception as exc:
        _native.log_fallback(NAME, FALLBACK, exc)
        return False
    return True


# ---- API -------------------------------------------------------------------------------------------
# Stored value widths pack() chooses for an 8-bit weight without offsets whose values all fit,
# narrowest first: 5 (-16..15: GGUF Q5_0, 5.5 bits a weight with float16 scales, 9 as int8) and
# 6 (-32..31: Q6_K, 8 bits against 10). Both decode one row faster than int8 and stay within
# noise of it from 16 rows on (benches/bench_quant_linear.py --suite compact).
COMPACT_VALUE_BITS: tuple[int, ...] = (5, 6)
# Stored value widths with which pack() chooses float16 scales (and offsets) when all are exact:
# 5 only. With int8 (Q8_0) or 4-bit (Q4_0) values they measured no faster for one row on Zen 4
# (the 5.5% / 17% fewer bytes did not show), so those keep float32 scales unless asked.
HALF_SCALE_VALUE_BITS: tuple[int, ...] = (5,)
_VALUE_RANGES = {5: (-16, 15), 6: (-32, 31), 8: (-128, 127)}


@dataclass(frozen=True, eq=False)
class CpuQuantWeight:
    """A :class:`QuantizedWeight` repacked for the C++ kernel (see ``csrc/quant_gemm.cpp``).

    ``value_bits``: how the kernel stores each value: 4 (a 4-bit weight), 8 (int8), or for an
    8-bit weight without offsets whose values all fit, 5 (-16..15) or 6 (-32..31) bits.
    ``half_scales``: scales and offsets stored as float16 (only when every one of them is exactly
    a float16; groups of 32 or more). Both are lossless: the kernel's results are the same bits
    whatever the layout."""

    data: torch.Tensor  # uint8, the kernel's tiled layout
    shape: tuple[int, int]  # (N, K)
    bits: int
    group_size: int
    has_offsets: bool
    library: _Library
    value_bits: int = 0  # 0: ``bits``
    half_scales: bool = False
    data_ptr: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.data.dtype != torch.uint8 or self.data.dim() != 1 or not self.data.is_contiguous():
            raise ConfigError("CpuQuantWeight: data must be a contiguous 1-D uint8 tensor")
        if self.value_bits == 0:
            object.__setattr__(self, "value_bits", self.bits)
        vb, g, off, half = self.value_bits, self.group_size, int(self.has_offsets), int(self.half_scales)
        lib = self.library.lib
        if not ((vb == self.bits or (self.bits == 8 and vb in (5, 6))) and lib.qg_has_layout(vb, g, off, half)):
            offsets = " with offsets" if off else ""
            raise ConfigError(
                f"CpuQuantWeight: no {self.layout} layout for {self.bits}-bit values{offsets}, groups of {g}"
            )
        n, k = self.shape
        want = lib.qg_packed_bytes(n, k, vb, g, off, half)
        if self.data.numel() != want or self.data.device.type != "cpu":
            raise ConfigError(f"CpuQuantWeight: {self.data.numel()} bytes of data, the layout needs {want} on the CPU")
        object.__setattr__(self, "data_ptr", self.data.data_ptr())

    @property
    def layout(self) -> str:
        """The stored form, e.g. ``"q5+f16"`` (5-bit values, float16 scales) or ``"q8+f32"``."""
        return f"q{self.value_bits}+{'f16' if self.half_scales else 'f32'}"

    # the kernel's results per row do not depend on the other rows (Qwen2ForCausalLM.linear reads this)
    batch_invariant = True

    def nbytes(self) -> int:
        """Bytes the kernel reads per call (weights, scales and offsets, tile padding included)."""
        return self.data.numel()


def _fp16_exact(t: torch.Tensor) -> bool:
    return bool((t.half().float() == t).all())


def _value_range(q: torch.Tensor) -> tuple[int, int]:
    if q.numel() == 0:
        return 0, 0
    lo, hi = torch.aminmax(q)
    return int(lo), int(hi)


def _fits(value_range: tuple[int, int], value_bits: int) -> bool:
    lo, hi = _VALUE_RANGES[value_bits]
    return lo <= value_range[0] and value_range[1] <= hi


def _has_layout(lib: _Library, weight: QuantizedWeight, value_bits: int, half: bool) -> bool:
    return bool(lib.lib.qg_has_layout(value_bits, weight.group_size, int(weight.offsets is not None), int(half)))


def _scales_fp16_exact(weight: QuantizedWeight) -> bool:
    return _fp16_exact(weight.scales) and (weight.offsets is None or _fp16_exact(weight.offsets))


def choose_layout(weight: QuantizedWeight, library: _Library | None = None) -> tuple[int, bool]:
    """``(value_bits, half_scales)``: the layout :func:`pack` uses for ``weight`` (see
    :class:`CpuQuantWeight`): the narrowest values of :data:`COMPACT_VALUE_BITS` that hold every
    value, float16 scales with the value widths of :data:`HALF_SCALE_VALUE_BITS` when every scale
    is exactly a float16 (and the library has such kernels). Raises CpuKernelUnavailable like
    :func:`pack`."""
    lib = library or load()
    value_bits = weight.bits
    if weight.bits == 8 and weight.offsets is None:
        value_range = _value_range(weight.qweight)
        value_bits = next((vb for vb in COMPACT_VALUE_BITS if _fits(value_range, vb)), 8)
    half = (
        value_bits in HALF_SCALE_VALUE_BITS
        and _has_layout(lib, weight, value_bits, True)
        and _scales_fp16_exact(weight)
    )
    return value_bits, half


def pack(
    weight: QuantizedWeight,
    library: _Library | None = None,
    *,
    value_bits: int | None = None,
    half_scales: bool | None = None,
) -> CpuQuantWeight:
    """Repack ``weight`` (CPU tensors) once for :func:`linear`. Raises CpuKernelUnavailable
    when the kernel cannot be built (check :func:`available` first).

    The layout is the most compact lossless one (:func:`choose_layout`) unless ``value_bits``
    (4 for 4-bit weights; 8, 6 or 5 for 8-bit ones) or ``half_scales`` say otherwise; a layout that
    cannot hold the weight exactly raises ConfigError. Every layout gives the same results."""
    lib = library or load()
    if weight.device.type != "cpu":
        raise ConfigError(f"cpu_quant.pack: the weight is on {weight.device}, expected the CPU")
    n, k = weight.shape
    q = weight.qweight.contiguous()
    scales = weight.scales.contiguous()
    offsets = None if weight.offsets is None else weight.offsets.contiguous()
    has_off = offsets is not None
    auto_bits, auto_half = choose_layout(weight, lib) if value_bits is None or half_scales is None else (0, False)
    vb = auto_bits if value_bits is None else value_bits
    half = auto_half if half_scales is None else half_scales
    if value_bits is not None and value_bits != weight.bits:
        if weight.bits != 8 or value_bits not in (5, 6) or has_off:
            raise ConfigError(f"cpu_quant.pack: no {value_bits}-bit layout for this {weight.bits}-bit weight")
        if not _fits(_value_range(q), value_bits):
            raise ConfigError(f"cpu_quant.pack: the weight has values outside {_VALUE_RANGES[value_bits]}")
    if half_scales and not _has_layout(lib, weight, vb, True):
        raise ConfigError(f"cpu_quant.pack: no float16-scale layout for q{vb} values in groups of {weight.group_size}")
    if half_scales and not _scales_fp16_exact(weight):
        raise ConfigError("cpu_quant.pack: the scales or offsets are not all exactly float16")
    if half:
        scales = scales.half()
        offsets = None if offsets is None else offsets.half()
    size = lib.lib.qg_packed_bytes(n, k, vb, weight.group_size, int(has_off), int(half))
    data = torch.empty(size, dtype=torch.uint8)
    if HUGE_PAGES and size >= 4 << 20:
        lib.lib.qg_advise_hugepages(data.data_ptr(), size)  # before the first write (the pack)
    rc = lib.lib.qg_pack(
        q.data_ptr(),
        weight.bits,
        scales.data_ptr(),
        None if offsets is None else offsets.data_ptr(),
        n,
        k,
        weight.group_size,
        vb,
        int(half),
        data.data_ptr(),
        torch.get_num_threads(),
    )
    if rc != 0:
        raise ConfigError(f"cpu_quant.pack: the kernel rejected the weight (code {rc})")
    return CpuQuantWeight(data, (n, k), weight.bits, weight.group_size, has_off, lib, vb, half)


_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1}


def linear(x: torch.Tensor, packed: CpuQuantWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [..., K] @ w.T + bias`` as ``[..., N]`` in ``x.dtype`` (bfloat16 and float32 natively,
    other float dtypes through float32). ``bias``: ``[N]``, float32 or bfloat16 natively."""
    n, k = packed.shape
    lead = None
    if x.dim() != 2:
        if x.dim() == 0 or x.shape[-1] != k:
            raise ConfigError(f"cpu_quant.linear: x of shape {tuple(x.shape)}, expected [..., {k}]")
        lead = x.shape[:-1]
        x = x.reshape(-1, k)
    elif x.shape[1] != k:
        raise ConfigError(f"cpu_quant.linear: x has {x.shape[1]} inputs, the weight {k}")
    if not x.is_cpu:
        raise ConfigError(f"cpu_quant.linear: x is on {x.device}, expected the CPU")
    out_dtype = x.dtype
    code = _DTYPE_CODE.get(out_dtype)
    if code is None:
        x, code = x.float(), 0
    m = x.shape[0]
    if x.is_contiguous():
        ldx = k
    else:
        ldx = x.stride(0)
        if x.stride(1) != 1 or (m > 1 and ldx < k):
            x, ldx = x.contiguous(), k
    if k == 0:  # an empty sum
        y = torch.zeros((m, n), dtype=torch.float32) + (0.0 if bias is None else bias.float())
        y = y.to(out_dtype)
        return y if lead is None else y.reshape(*lead, n)
    y = torch.empty((m, n), dtype=x.dtype)
    bias_ptr: int | None = None
    bias_code: int | None = 0
    if bias is not None:
        if bias.shape != (n,):
            raise ConfigError(f"cpu_quant.linear: bias of shape {tuple(bias.shape)}, expected ({n},)")
        bias_code = _DTYPE_CODE.get(bias.dtype)
        if bias_code is None or bias.stride(0) != 1 or not bias.is_cpu:
            bias, bias_code = bias.float().cpu().contiguous(), 0
        bias_ptr = bias.data_ptr()
    rc = packed.library.linear_fn(
        x.data_ptr(), code, ldx, m, k,
        packed.data_ptr, n, packed.value_bits, packed.group_size, packed.has_offsets, packed.half_scales,
        bias_ptr, bias_code, y.data_ptr(), code, n, torch.get_num_threads(),
    )  # fmt: skip
    if rc != 0:
        raise CpuKernelUnavailable(f"cpu_quant.linear: the kernel failed (code {rc})")
    if y.dtype != out_dtype:
        y = y.to(out_dtype)
    return y if lead is None else y.reshape(*lead, n)


# ---- the torch backend's quantized ops (tritonlm.kernels.get_ops("torch")) -----------------------
def pack_quant_weight(weight: QuantizedWeight) -> CpuQuantWeight | QuantizedWeight:
    """The layout the torch backend multiplies by: this kernel's, when it builds on this machine
    and the weight is on the CPU; else the weight itself (then :func:`quant_linear` runs the
    torch reference)."""
    if weight.device.type == "cpu" and available():
        return pack(weight)
    return weight


def quant_linear(
    x: torch.Tensor, weight: CpuQuantWeight | QuantizedWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x [M, K] @ w.T + bias`` for a weight from :func:`pack_quant_weight`: the C++ kernel for
    every row count (it beats dense bf16 from one row to prefill sizes, benches/RESULTS.md), the
    torch reference for an unpacked weight."""
    if isinstance(weight, CpuQuantWeight):
        return linear(x, weight, bias)
    from tritonlm.kernels.reference import quant_linear as reference_quant_linear

    return reference_quant_linear(x, weight, bias)


__all__ = [
    "COMPACT_VALUE_BITS",
    "HALF_SCALE_VALUE_BITS",
    "CpuKernelUnavailable",
    "CpuQuantWeight",
    "available",
    "build",
    "choose_layout",
    "library_path",
    "linear",
    "load",
    "pack",
    "pack_quant_weight",
    "quant_linear",
]
