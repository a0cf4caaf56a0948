"""Native C++ versions of the torch backend's small per-layer ops (``csrc/cpu_ops.cpp``, ctypes).

:func:`rms_norm`, :func:`fused_add_rms_norm`, :func:`rotary_embedding`, :func:`store_kv_cache`,
:func:`paged_decode_attention` and :func:`silu_and_mul` have the signatures and semantics of the
functions of the same names in :mod:`tritonlm.kernels.reference`. At decode sizes the reference
spends its time in the per-op overhead of a dozen tiny aten ops per call; each of these is one
C call.

Results:

* ``rms_norm``, ``fused_add_rms_norm``, ``rotary_embedding``, ``silu_and_mul``,
  ``store_kv_cache``: the same bits as the reference for float32 and bfloat16 (the C++ replays
  each torch op's rounding, torch's summation order for the mean of squares and torch's exp for
  silu; see the source's header). For rms_norm and silu_and_mul that replays torch's CPU kernels,
  whose vector width depends on the torch build and the CPU: it is measured once when the library
  loads, against the reference on probe inputs (:class:`_Library`); where no width matches (or
  torch's capability is neither AVX-512 nor AVX2) those two run the reference.
* ``paged_decode_attention``: float32 math (scores, softmax, weighted sum; fused multiply-adds) in
  a fixed order per (sequence, kv head), about 1e-6 of the output's max-norm from the reference's
  float32 matmuls; a sequence's result is the same bits whatever the rest of the batch or the
  thread count.

Every function runs the reference instead when the library is unavailable (no compiler, a failed
build: see :mod:`tritonlm.kernels._native`) or the inputs are outside what the C++ handles (not
on the CPU, dtypes other than float32 / bfloat16, a last dim that is not contiguous, other
layouts listed per function, tensors that require grad under grad mode); out-of-range positions,
slots, block indices or context lengths also go to the reference, which raises or answers as it
does. Importing this module compiles nothing and never raises; the library is built (or found in
the cache) on the first call.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import torch

from tritonlm.kernels import _native, reference

SOURCE = _native.CSRC / "cpu_ops.cpp"
LIB_NAME = "cpu_ops"
ABI_VERSION = 1  # must match CO_ABI_VERSION in the source

_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1}
_INDEX_CODE = {torch.int32: 0, torch.int64: 1}
_TORCH_GRAIN = 32768  # at::internal::GRAIN_SIZE: torch's elementwise ops use threads above this many elements
_CAPABILITIES = ("AVX512", "AVX2")  # torch CPU capabilities whose kernels rms_norm and silu_and_mul replay
_WIDTHS = (8, 16)  # candidate float32 lanes of torch's Vectorized<float> in those kernels

# Every integer argument goes over as a pointer-sized word (c_void_p: ctypes converts those about
# twice as fast as c_int64, which matters at a few µs a call); the C side declares int64_t, which
# the x86-64 and aarch64 calling conventions pass in the same registers.
_w, _f32 = ctypes.c_void_p, ctypes.c_float


class _Library:
    """The loaded library with its C signatures declared, and torch's kernel layouts it replays."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        if ctypes.sizeof(ctypes.c_void_p) != 8:
            raise _native.NativeUnavailable("cpu_ops needs 64-bit pointers")
        lib.co_abi_version.restype = ctypes.c_int
        lib.co_abi_version.argtypes = []
        if lib.co_abi_version() != ABI_VERSION:
            raise _native.NativeUnavailable(f"cpu_ops: ABI version {lib.co_abi_version()}, expected {ABI_VERSION}")
        for name, args in (
            ("co_rms_norm", [_w] * 11 + [_f32] + [_w] * 4),
            ("co_silu_and_mul", [_w] * 9),
            ("co_rotary", [_w] * 16),
            ("co_store_kv", [_w] * 16),
            ("co_decode_attention", [_w] * 19 + [_f32, _w, _w]),
        ):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = args
        self.lib = lib
        self.rms_norm = lib.co_rms_norm
        self.silu_and_mul = lib.co_silu_and_mul
        self.rotary = lib.co_rotary
        self.store_kv = lib.co_store_kv
        self.decode_attention = lib.co_decode_attention
        # torch's float32 vector width in its sum kernel (rms_norm's mean) and its silu kernel; 0: run
        # the reference. Which ISA build torch dispatches a kernel to depends on the kernel (a kernel
        # registered with REGISTER_DISPATCH leaves its AVX-512 slot empty, so an AVX-512 CPU runs its
        # AVX2 build: 8 lanes; one with ALSO_REGISTER_AVX512_DISPATCH runs 16), so each is measured
        # once here against the reference on probe inputs that tell the widths apart.
        self.rms_width = 0
        self.silu_width = 0
        if torch.backends.cpu.get_cpu_capability() in _CAPABILITIES:
            self.rms_width = self._calibrate("rms_width", _rms_probe_matches)
            self.silu_width = self._calibrate("silu_width", _silu_probe_matches)

    def _calibrate(self, attr: str, matches: Callable[[_Library], bool]) -> int:
        for width in _WIDTHS:
            setattr(self, attr, width)
            try:
                if matches(self):
                    return width
            except Exception:
                pass
        return 0


def _bits_equal(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    return a is not None and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def _rms_probe_matches(lib: _Library) -> bool:
    """rms_norm at lib.rms_width is the reference's bits on float32 rows whose sums of squares
    come out differently for 8 and 16 lanes (random rows; sizes with and without tails and levels)."""
    gen = torch.Generator().manual_seed(20240611)
    for width in (896, 100, 1000):
        x = torch.randn(16, width, generator=gen) * 3
        w = torch.randn(width, generator=gen)
        got = _rms(lib, x, None, w, 1e-6)
        if got is None or not _bits_equal(got[1], reference.rms_norm(x, w, 1e-6)):
            return False
    return True


def _silu_probe_matches(lib: _Library) -> bool:
    """silu_and_mul at lib.silu_width is the reference's bits on rows of 24 float32 values: the
    first 16 run through torch's vector exp with 8 lanes, none with 16 (the two exps differ in a
    few percent of these inputs), plus a row long enough for both loops."""
    gen = torch.Generator().manual_seed(20240611)
    for rows, half in ((64, 24), (2, 1000)):
        x = torch.empty(rows, 2 * half).uniform_(-12.0, 12.0, generator=gen)
        if not _bits_equal(_silu(lib, x), reference.silu_and_mul(x)):
            return False
    return True


FALLBACK = "rms_norm, rotary, KV store, decode attention and silu_mul fall back to the torch reference (slower)"


@functools.cache
def library() -> _Library | None:
    """The loaded library, built on first use; None where it cannot be built or loaded (logged
    once, at WARNING, with the reason)."""
    try:
        return _Library(_native.load(SOURCE, LIB_NAME))
    except Exception as exc:
        _native.log_fallback(LIB_NAME, FALLBACK, exc)
        return None


def available() -> bool:
    """True when the library builds (or is cached) and loads on this machine; never raises."""
    return library() is not None


def _grad(*tensors: torch.Tensor) -> bool:
    """Autograd would record the op (grad mode on and an input requiring grad): run the reference."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor of x's shape and dtype (empty_like is the cheapest allocation from
    Python; it keeps the strides of a dense permuted x, which the C side cannot write)."""
    out = torch.empty_like(x)
    return out if out.is_contiguous() else torch.empty(x.shape, dtype=x.dtype)


# ---- rms_norm --------------------------------------------------------------------------------------
# (the wrappers below are the per-call cost at decode sizes: each torch attribute read costs ~0.1 µs,
# so they read each once and call no helpers on the common path)
def _rms(
    lib: _Library, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    width = lib.rms_width
    xc, wc = _DTYPE_CODE.get(x.dtype), _DTYPE_CODE.get(weight.dtype)
    if not width or xc is None or wc is None or not (x.is_cpu and weight.is_cpu):
        return None
    shape = x.shape
    if len(shape) == 2:  # rows with any row stride
        rows, h = shape
        ldx, inner = x.stride()
        if inner != 1:
            return None
    elif shape and x.is_contiguous():
        h = shape[-1]
        rows, ldx = (x.numel() // h if h else 0), h
    else:
        return None
    if h < width or weight.shape != (h,) or not weight.is_contiguous():
        return None
    if rows == 1 and h > _TORCH_GRAIN:  # torch would split this single row's sum over its threads
        return None
    ldr = 0
    if residual is not None:
        if residual.dtype != x.dtype or residual.shape != shape or not residual.is_cpu:
            return None
        if len(shape) == 2:
            ldr, inner = residual.stride()
            if inner != 1:
                return None
        elif residual.is_contiguous():
            ldr = h
        else:
            return None
        if torch.is_grad_enabled() and (x.requires_grad or residual.requires_grad or weight.requires_grad):
            return None
    elif torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return None
    if xc == wc:
        y = _empty_like(x)
    else:  # torch promotes bfloat16 and float32 to float32
        y = torch.empty(shape, dtype=torch.float32)
    summed = None if residual is None else _empty_like(x)
    rc = lib.rms_norm(
        x.data_ptr(), ldx,
        None if residual is None else residual.data_ptr(), ldr,
        None if summed is None else summed.data_ptr(), h,
        weight.data_ptr(), y.data_ptr(), h, rows, h, eps, xc, wc, width,
        torch.get_num_threads() if rows * h >= _TORCH_GRAIN else 1,
    )  # fmt: skip
    if rc != 0:
        return None
    return summed if summed is not None else x, y


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`tritonlm.kernels.reference.rms_norm`, natively (the same bits). Native for ``x [..., H]``
    (2-D with a contiguous last dim, or contiguous) and ``weight [H]``, float32 / bfloat16 each."""
    lib = library()
    if lib is not None:
        out = _rms(lib, x, None, weight, eps)
        if out is not None:
            return out[1]
    return reference.rms_norm(x, weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`tritonlm.kernels.reference.fused_add_rms_norm`, natively (the same bits); ``x`` and
    ``residual`` of one shape and dtype. Inputs are not modified."""
    lib = library()
    if lib is not None:
        out = _rms(lib, x, residual, weight, eps)
        if out is not None:
            return out
    return reference.fused_add_rms_norm(x, residual, weight, eps)


# ---- rotary embedding ------------------------------------------------------------------------------
def _rotary(lib: _Library, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor) -> bool:
    qc, kc = _DTYPE_CODE.get(q.dtype), _DTYPE_CODE.get(k.dtype)
    if qc is None or kc is None or cache.dtype != torch.float32 or positions.dtype != torch.int64:
        return False
    qshape, kshape, cshape = q.shape, k.shape, cache.shape
    if len(qshape) != 3 or len(kshape) != 3 or len(cshape) != 2:
        return False
    t, hq, d = qshape
    if kshape[0] != t or kshape[2] != d or d % 2 or cshape[1] != d or positions.shape != (t,):
        return False
    qs, ks, cs = q.stride(), k.stride(), cache.stride()
    if qs[2] != 1 or ks[2] != 1 or cs[1] != 1 or not positions.is_contiguous():
        return False
    if not (q.is_cpu and k.is_cpu and positions.is_cpu and cache.is_cpu):
        return False
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return False
    rc = lib.rotary(
        q.data_ptr(), qs[0], qs[1], hq, qc, k.data_ptr(), ks[0], ks[1], kshape[1], kc,
        t, d, positions.data_ptr(), cache.data_ptr(), cshape[0], cs[0],
    )  # fmt: skip
    return rc == 0


def rotary_embedding(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    """:func:`tritonlm.kernels.reference.rotary_embedding`, natively, **in place** (the same bits).

    ``q [T, Hq, D]`` and ``k [T, Hk, D]`` may be strided views (e.g. slices of a fused qkv row)
    with a contiguous last dim; ``positions`` int64 ``[T]``; ``cos_sin_cache`` float32 ``[P, D]``.
    """
    lib = library()
    if lib is None or not _rotary(lib, q, k, positions, cos_sin_cache):
        reference.rotary_embedding(q, k, positions, cos_sin_cache)


# ---- KV-cache store ----------------------------------------------------------------------------------
def _store(
    lib: _Library, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> bool:
    kc, cc, sc = _DTYPE_CODE.get(k.dtype), _DTYPE_CODE.get(k_cache.dtype), _INDEX_CODE.get(slots.dtype)
    if kc is None or cc is None or sc is None or v.dtype != k.dtype or v_cache.dtype != k_cache.dtype:
        return False
    kshape, cshape = k.shape, k_cache.shape
    if len(kshape) != 3 or len(cshape) != 4 or v.shape != kshape or v_cache.shape != cshape:
        return False
    t, hk, d = kshape
    if cshape[2] != hk or cshape[3] != d or slots.shape != (t,) or not slots.is_contiguous():
        return False
    ks, vs = k.stride(), v.stride()
    if ks[2] != 1 or vs[2] != 1 or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        return False
    if not (k.is_cpu and v.is_cpu and k_cache.is_cpu and v_cache.is_cpu and slots.is_cpu):
        return False
    if _grad(k, v, k_cache, v_cache):
        return False
    rc = lib.store_kv(
        k.data_ptr(), ks[0], ks[1], v.data_ptr(), vs[0], vs[1], kc,
        k_cache.data_ptr(), v_cache.data_ptr(), cc, cshape[0] * cshape[1], t, hk, d, slots.data_ptr(), sc,
    )  # fmt: skip
    return rc == 0


def store_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """:func:`tritonlm.kernels.reference.store_kv_cache`, natively, **in place** (the same bits).

    ``k, v [T, Hk, D]`` may be strided views with a contiguous last dim; the caches
    ``[N, S, Hk, D]`` contiguous; ``slot_mapping`` int32 / int64 ``[T]``, negative slots write
    nothing. Float32 rows stored into a bfloat16 cache round as ``Tensor.to`` does."""
    lib = library()
    if lib is None or not _store(lib, k, v, k_cache, v_cache, slot_mapping):
        reference.store_kv_cache(k, v, k_cache, v_cache, slot_mapping)


# ---- paged decode attention ------------------------------------------------------------------------
def _attention(
    lib: _Library,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor | None:
    qc, cc = _DTYPE_CODE.get(q.dtype), _DTYPE_CODE.get(k_cache.dtype)
    btc, clc = _INDEX_CODE.get(block_tables.dtype), _INDEX_CODE.get(context_lens.dtype)
    if qc is None or cc is None or btc is None or clc is None or v_cache.dtype != k_cache.dtype:
        return None
    qshape, cshape, tshape = q.shape, k_cache.shape, block_tables.shape
    if len(qshape) != 3 or len(cshape) != 4 or v_cache.shape != cshape or len(tshape) != 2:
        return None
    b, hq, d = qshape
    n, s, hk, dk = cshape
    qs, ts = q.stride(), block_tables.stride()
    if b == 0 or dk != d or qs[2] != 1 or ts[1] != 1 or tshape[0] < b or context_lens.shape != (b,):
        return None
    if not (context_lens.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous()):
        return None
    if not (q.is_cpu and k_cache.is_cpu and v_cache.is_cpu and block_tables.is_cpu and context_lens.is_cpu):
        return None
    if _grad(q, k_cache, v_cache):
        return None
    out = _empty_like(q)
    rc = lib.decode_attention(
        q.data_ptr(), qs[0], qs[1], qc, k_cache.data_ptr(), v_cache.data_ptr(), cc,
        n, s, hk, d, b, hq, block_tables.data_ptr(), btc, ts[0], tshape[1],
        context_lens.data_ptr(), clc, scale, out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out if rc == 0 else None


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """:func:`tritonlm.kernels.reference.paged_decode_attention`, natively: ``q [B, Hq, D]`` (a
    strided view is fine), caches ``[N, S, Hk, D]`` contiguous, ``D`` in 32, 64, 80, 96, 128, 256,
    int32 / int64 ``block_tables`` and ``context_lens``. Float32 math in a fixed order per
    (sequence, kv head): a sequence's result is the same bits whatever the batch. ``[B, Hq, D]``."""
    lib = library()
    if lib is not None:
        out = _attention(lib, q, k_cache, v_cache, block_tables, context_lens, scale)
        if out is not None:
            return out
    return reference.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)


# ---- silu_and_mul ----------------------------------------------------------------------------------
def _silu(lib: _Library, x: torch.Tensor) -> torch.Tensor | None:
    width, xc = lib.silu_width, _DTYPE_CODE.get(x.dtype)
    if not width or xc is None or not x.is_cpu:
        return None
    shape = x.shape
    if len(shape) == 2:  # rows with any row stride
        rows, two_i = shape
        ldx, inner = x.stride()
        if inner != 1:
            return None
    elif shape and x.is_contiguous():
        two_i = shape[-1]
        rows, ldx = (x.numel() // two_i if two_i else 0), two_i
    else:
        return None
    if two_i % 2 or (torch.is_grad_enabled() and x.requires_grad):
        return None
    half = two_i // 2
    y = torch.empty((*shape[:-1], half), dtype=x.dtype)
    # torch's vectorized loop takes chunks of 2 Vectorized<T>: 2 x width floats or 2 x 2 width bfloat16
    step = 2 * width * (2 if xc else 1)
    threads = torch.get_num_threads() if rows * half > _TORCH_GRAIN else 1
    rc = lib.silu_and_mul(x.data_ptr(), ldx, y.data_ptr(), rows, half, xc, step, threads, threads)
    return y if rc == 0 else None


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """:func:`tritonlm.kernels.reference.silu_and_mul`, natively (the same bits): ``x [..., 2I]``
    2-D with a contiguous last dim, or contiguous; returns ``[..., I]``."""
    lib = library()
    if lib is not None:
        out = _silu(lib, x)
        if out is not None:
            return out
    return reference.silu_and_mul(x)


# the ops get_ops("torch") takes from here (each falls back to tritonlm.kernels.reference by itself)
NATIVE_OPS: tuple[str, ...] = (
    "rms_norm",
    "fused_add_rms_norm",
    "rotary_embedding",
    "store_kv_cache",
    "paged_decode_attention",
    "silu_and_mul",
)

__all__ = [
    "NATIVE_OPS",
    "available",
    "fused_add_rms_norm",
    "library",
    "paged_decode_attention",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "store_kv_cache",
]
