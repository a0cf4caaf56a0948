"""The C++ quantized linear (tritonlm.kernels.cpu_quant) against the torch reference.

Error model: the kernel quantizes each activation row to int8 per block of BS = min(G, 32) inputs
(scale amax / 127, round half to even), then computes exact integer dot products and a float32
scale-and-sum per block. So

* against the reference fed the *same* quantized activations, computed in float64, the only
  differences are float32 roundings: a few ulps per block term, summed over K / BS blocks. The
  tight check allows 8 * (K / BS) * 2^-24 of sum_k |x_k w_k| per output (plus one bf16 ulp,
  2^-8 relative, when the output is bfloat16).
* against the plain reference (float activations), each input moves by at most amax_b / 254,
  which for Gaussian inputs gives a max error of ~5e-3 of the output's max-norm (about 4 standard
  deviations of the per-output error, sqrt(K) sigma_w amax / (254 sqrt(3))); the loose check allows
  2.5e-2 of the max-norm (plus 2^-8 for bfloat16 outputs).

The kernel is built once per session into a temporary TRITONLM_CACHE_DIR (by two threads at once,
which exercises the build lock).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tritonlm.errors import ConfigError
from tritonlm.kernels import _native, cpu_quant
from tritonlm.kernels.qweight import QuantizedWeight, quantize_rtn
from tritonlm.kernels.reference import quant_linear

pytestmark = pytest.mark.skipif(shutil.which(cpu_quant.COMPILER) is None, reason="no C++ compiler")

SHAPES = [(40, 64), (72, 96), (136, 896), (1000, 896)]  # (N, K): N not a multiple of the tile
ROWS = (1, 3, 17, 64)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tritonlm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITONLM_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def lib(cache_dir: Path):
    """The native build, compiled by two threads at once into the fresh cache."""
    results: list[object] = []

    def run() -> None:
        try:
            results.append(cpu_quant.build())
        except Exception as exc:  # surfaced below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, Exception):
            raise r
    assert len(set(results)) == 1
    return cpu_quant.load()


def make_compact_weight(n: int, k: int, value_bits: int, group: int, gen: torch.Generator) -> QuantizedWeight:
    """An 8-bit weight whose values fit ``value_bits`` (5: -16..15 with float16-exact scales, as GGUF
    Q5_0; 6: -32..31 with float32 scales, as Q6_K; 8: -127..127 with float16-exact scales, as Q8_0),
    every value of the range present."""
    hi = {5: 15, 6: 31, 8: 127}[value_bits]
    q = torch.randint(-hi - 1 if value_bits < 8 else -hi, hi + 1, (n, k), generator=gen, dtype=torch.int8)
    q.view(-1)[:2] = torch.tensor([-hi - 1 if value_bits < 8 else -hi, hi], dtype=torch.int8)
    scales = torch.rand(n, k // group, generator=gen) * 0.01 + 1e-3
    if value_bits != 6:
        scales = scales.half().float()
    return QuantizedWeight(q, scales, None, 8, group)


def make_weight(n: int, k: int, bits: int, group: int, offsets: bool, gen: torch.Generator) -> QuantizedWeight:
    """bits 4 / 8: round-to-nearest weights; bits 5 / 6: make_compact_weight (no offsets)."""
    if bits in (5, 6):
        assert not offsets
        return make_compact_weight(n, k, bits, group, gen)
    qw = quantize_rtn(torch.randn(n, k, generator=gen) * 0.05, bits, group)
    if offsets and qw.offsets is None:
        qw = QuantizedWeight(qw.qweight, qw.scales, torch.randn(qw.scales.shape, generator=gen) * 0.02, bits, group)
    if not offsets and qw.offsets is not None:
        qw = QuantizedWeight(qw.qweight, qw.scales, None, bits, group)
    return qw


def quantize_activations(x: torch.Tensor, block: int) -> torch.Tensor:
    """The kernel's activation quantization, dequantized, in float64 (the float32 steps done in float32)."""
    m, k = x.shape
    xb = x.float().reshape(m, k // block, block)
    amax = xb.abs().amax(-1, keepdim=True)
    # a true float32 division (127.0 / tensor would be 127 * reciprocal(tensor), rounded twice)
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    q = torch.round(xb * inv).clamp(-127, 127)
    scale = amax / 127.0
    return (q.double() * scale.double()).reshape(m, k)


def exact_weight(qw: QuantizedWeight) -> torch.Tensor:
    n, k = qw.shape
    g = qw.group_size
    w = qw.int_values().double().reshape(n, k // g, g) * qw.scales.double().unsqueeze(-1)
    if qw.offsets is not None:
        w = w + qw.offsets.double().unsqueeze(-1)
    return w.reshape(n, k)


class References:
    """A weight's float64 form (exact) and float32 dequantization (the reference's), computed once."""

    def __init__(self, qw: QuantizedWeight) -> None:
        self.qw = qw
        self.w64 = exact_weight(qw)
        self.w32 = qw.dequantize(torch.float32)

    def plain(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """reference.quant_linear, with the dequantized matrix cached."""
        return F.linear(x.float(), self.w32, None if bias is None else bias.float()).to(x.dtype)


def check_against_references(
    y: torch.Tensor, x: torch.Tensor, qw: QuantizedWeight | References, bias: torch.Tensor | None
) -> None:
    refs = qw if isinstance(qw, References) else References(qw)
    k = refs.qw.shape[1]
    block = min(refs.qw.group_size, 32)
    xq = quantize_activations(x, block)
    tight = xq @ refs.w64.T
    magnitude = xq.abs() @ refs.w64.abs().T
    if bias is not None:
        tight = tight + bias.double()
        magnitude = magnitude + bias.double().abs()
    bf16_ulp = 2.0**-8 if y.dtype == torch.bfloat16 else 0.0
    got = y.double()
    tol = 8 * (k // block) * 2.0**-24 * magnitude + bf16_ulp * tight.abs() + 1e-30
    worst = ((got - tight).abs() / tol).max().item()
    assert worst <= 1.0, f"tight check: error {worst:.3g} x the float32 rounding bound"

    ref = (refs.plain(x, bias) if isinstance(qw, References) else quant_linear(x, refs.qw, bias)).double()
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    assert err <= (2.5e-2 + bf16_ulp) * scale, f"loose check: max error {err / scale:.3g} of the max-norm"


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("offsets", [False, True])
@pytest.mark.parametrize("group", [16, 32])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_reference(lib, bits: int, offsets: bool, group: int, with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(1000 * bits + 100 * offsets + 10 * group + with_bias)
    for n, k in SHAPES:
        qw = make_weight(n, k, bits, group, offsets, gen)
        refs = References(qw)
        packed = cpu_quant.pack(qw)
        bias = torch.randn(n, generator=gen) if with_bias else None
        for m in ROWS:
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(m, k, generator=gen).to(dtype)
                y = cpu_quant.linear(x, packed, bias)
                assert y.shape == (m, n) and y.dtype == dtype
                check_against_references(y, x, refs, bias)
        # the cached plain reference is reference.quant_linear
        assert torch.equal(refs.plain(x, bias), quant_linear(x, qw, bias))


def test_group_larger_than_block(lib) -> None:
    """G = 64 and 128: the weight's scales are shared by two / four activation blocks of 32."""
    gen = torch.Generator().manual_seed(7)
    for group in (64, 128):
        for bits, offsets in ((8, False), (4, True)):
            qw = make_weight(136, 256, bits, group, offsets, gen)
            x = torch.randn(5, 256, generator=gen)
            check_against_references(cpu_quant.linear(x, cpu_quant.pack(qw)), x, qw, None)


def test_edge_inputs(lib) -> None:
    """Zero blocks (scale 0), bf16 bias, leading dims, a strided x, float16 x and no rows."""
    gen = torch.Generator().manual_seed(3)
    qw = make_weight(72, 96, 4, 32, True, gen)
    packed = cpu_quant.pack(qw)
    x = torch.randn(4, 96, generator=gen)
    x[1, 32:64] = 0.0
    x[2] = 0.0
    bias = torch.randn(72, generator=gen).bfloat16()
    check_against_references(cpu_quant.linear(x, packed, bias), x, qw, bias.float())
    assert torch.equal(cpu_quant.linear(x, packed, bias), cpu_quant.linear(x, packed, bias.float()))
    x3 = torch.randn(2, 3, 96, generator=gen)
    assert torch.equal(cpu_quant.linear(x3, packed), cpu_quant.linear(x3.reshape(6, 96), packed).reshape(2, 3, 72))
    wide = torch.randn(5, 200, generator=gen)
    strided = wide[:, 8:104]
    assert torch.equal(cpu_quant.linear(strided, packed), cpu_quant.linear(strided.contiguous(), packed))
    half = cpu_quant.linear(x.half(), packed)
    assert half.dtype == torch.float16
    assert torch.equal(half, cpu_quant.linear(x.half().float(), packed).half())
    assert cpu_quant.linear(torch.empty(0, 96), packed).shape == (0, 72)
    # a NaN input poisons its row only (as float math would); an infinite one makes it non-finite
    bad = x.clone()
    bad[1, 40] = float("nan")
    bad[3, 7] = float("inf")
    y = cpu_quant.linear(bad, packed)
    assert y[1].isnan().all() and not y[3].isfinite().any()
    assert torch.equal(y[[0, 2]], cpu_quant.linear(x[[0, 2]], packed))


@pytest.mark.parametrize(
    "bits,group,offsets",
    [(8, 32, False), (4, 32, True), (8, 16, False), (4, 16, False), (5, 32, False), (6, 16, False)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_invariance(lib, bits: int, group: int, offsets: bool, dtype: torch.dtype) -> None:
    """Row i alone, inside a batch of 17, inside other sub-batches and at 1 or 2 threads: same bits."""
    gen = torch.Generator().manual_seed(11 * bits + group)
    n, k = 1000, 896
    qw = make_weight(n, k, bits, group, offsets, gen)
    packed = cpu_quant.pack(qw)
    bias = torch.randn(n, generator=gen)
    x = torch.randn(17, k, generator=gen).to(dtype)
    full = cpu_quant.linear(x, packed, bias)
    for i in range(17):
        assert torch.equal(cpu_quant.linear(x[i : i + 1], packed, bias), full[i : i + 1]), f"row {i}"
    for lo, hi in ((0, 4), (3, 12), (5, 17), (9, 10)):
        assert torch.equal(cpu_quant.linear(x[lo:hi], packed, bias), full[lo:hi])
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            assert torch.equal(cpu_quant.linear(x, packed, bias), full), f"{t} threads"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "bits,group,offsets,n,k,m",
    [
        (8, 32, False, 200, 896, 300),
        (4, 32, True, 72, 4864, 64),
        (5, 32, False, 200, 896, 300),
        (6, 16, False, 72, 4864, 64),
    ],
)
def test_batch_invariance_many_rows(lib, bits: int, group: int, offsets: bool, n: int, k: int, m: int) -> None:
    """Large batches take other paths (rows quantized by all threads, rows split into cache-sized
    chunks, several passes per tile with prefetching, compact tiles expanded once per thread):
    rows still match their one-row results."""
    gen = torch.Generator().manual_seed(m)
    qw = make_weight(n, k, bits, group, offsets, gen)
    packed = cpu_quant.pack(qw)
    x = torch.randn(m, k, generator=gen).bfloat16()
    full = cpu_quant.linear(x, packed)
    for i in (0, 1, m // 2, m - 1):
        assert torch.equal(cpu_quant.linear(x[i : i + 1], packed), full[i : i + 1]), f"row {i}"
    check_against_references(full, x, qw, None)


def test_build_goes_to_the_cache_dir(lib, cache_dir: Path) -> None:
    path = cpu_quant.library_path()
    assert path.is_relative_to(cache_dir / "kernels")
    assert lib.path == path and path.is_file()
    # nothing half-written is left behind: the library, the lock file, nothing else
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([".lock", cpu_quant.LIB_NAME])
    mtime = path.stat().st_mtime_ns
    assert cpu_quant.build() == path and path.stat().st_mtime_ns == mtime  # cached: not rebuilt
    assert cpu_quant.available()


def test_shares_torch_openmp_runtime(lib, cache_dir: Path) -> None:
    """In a fresh process, loading the kernel maps no OpenMP runtime besides torch's."""
    if not Path("/proc/self/maps").exists() or _native.torch_gomp() is None:
        pytest.skip("needs /proc and a torch that bundles libgomp")
    code = (
        "import torch, tritonlm.kernels.cpu_quant as c; c.load(); "
        "print('\\n'.join(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l})))"
    )
    env = {**os.environ, "TRITONLM_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(_native.torch_gomp().resolve())]


def test_unavailable_without_compiler(lib, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_quant, "COMPILER", "tritonlm-no-such-compiler")
    assert cpu_quant.available() is False
    with pytest.raises(cpu_quant.CpuKernelUnavailable, match="no C\\+\\+ compiler"):
        cpu_quant.load()
    qw = make_weight(40, 64, 8, 32, False, torch.Generator().manual_seed(0))
    with pytest.raises(cpu_quant.CpuKernelUnavailable):
        cpu_quant.pack(qw)
    # the backend's entry points fall back to the torch reference, and it is right: against the
    # dequantized weight in float64
    monkeypatch.setattr(_native, "_WARNED", set())
    weight = cpu_quant.pack_quant_weight(qw)
    assert weight is qw and not isinstance(weight, cpu_quant.CpuQuantWeight)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(40, generator=torch.Generator().manual_seed(2))
    y = cpu_quant.quant_linear(x, weight, bias)
    ref = x.double() @ qw.dequantize(torch.float32).double().T + bias.double()
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_unavailable_when_the_build_fails(lib, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "quant_gemm.cpp"
    broken.write_text(cpu_quant.SOURCE.read_text() + "\nthis is not C++;\n")
    monkeypatch.setattr(cpu_quant, "SOURCE", broken)
    assert cpu_quant.available() is False
    with pytest.raises(cpu_quant.CpuKernelUnavailable, match="failed"):
        cpu_quant.load()
    folder = cpu_quant.library_path().parent
    assert not any(p.suffix in (".so", ".o") or p.name.startswith(".build-") for p in folder.iterdir())


def test_import_never_builds(tmp_path: Path) -> None:
    """Importing the module with no compiler on PATH neither raises nor compiles."""
    code = (
        "import tritonlm.kernels.cpu_quant as c, os; "
        "assert not os.path.exists(os.path.join(os.environ['TRITONLM_CACHE_DIR'], 'kernels')); "
        "print(c.available())"
    )
    env = {"PATH": str(tmp_path), "TRITONLM_CACHE_DIR": str(tmp_path / "cache"), "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _isa_flags(march: str) -> tuple[str, ...]:
    return tuple(f"-march={march}" if f == "-march=native" else f for f in cpu_quant.COMPILE_FLAGS)


@pytest.mark.parametrize("march,isa", [("x86-64-v3", "avx2"), ("x86-64", "scalar")])
def test_portable_paths_match_native(lib, march: str, isa: str) -> None:
    """The AVX2 and scalar builds give the same bits as the native one (same integer sums,
    same float32 operation order), in every layout: int8, 4-bit, 5- and 6-bit values, float16
    scales (and offsets)."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("needs an x86-64 CPU with AVX2")
    other = cpu_quant.load(_isa_flags(march))
    assert other.isa == isa
    gen = torch.Generator().manual_seed(5)
    cases = ((8, 32, False), (4, 32, True), (8, 16, True), (4, 16, False), (5, 32, False), (6, 16, False))
    for bits, group, offsets, half in [(*c, None) for c in cases] + [(8, 32, True, True), (4, 32, True, True)]:
        qw = make_weight(136, 896, bits, group, offsets, gen)
        if half:
            exact = [t.half().float() for t in (qw.scales, qw.offsets)]
            qw = QuantizedWeight(qw.qweight, exact[0], exact[1], qw.bits, group)
        bias = torch.randn(136, generator=gen)
        packed = cpu_quant.pack(qw, half_scales=half)
        packed_other = cpu_quant.pack(qw, other, half_scales=half)
        assert packed_other.layout == packed.layout
        for dtype in (torch.float32, torch.bfloat16):
            for m in (3, 17, 90):  # 90 rows: 5-bit tiles expanded before their sweeps
                x = torch.randn(m, 896, generator=gen).to(dtype)
                x[2, 100] = float("nan")
                x[1, 5] = float("-inf")
                want = cpu_quant.linear(x, packed, bias)
                got = cpu_quant.linear(x, packed_other, bias)
                msg = str((bits, group, offsets, m, packed.layout))
                torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=msg)


# ---- compact layouts --------------------------------------------------------------------------------


def test_compact_layout_chosen_when_lossless(lib) -> None:
    """Q5_0-like weights: 5-bit values + float16 scales (5.5 bits a weight); Q6_K-like: 6-bit values,
    float32 scales (8 bits). Float16 scales are chosen with 5-bit values only (HALF_SCALE_VALUE_BITS:
    int8 and 4-bit values measured no faster with them), and only for groups of 32 or more (no
    kernels for smaller ones); asked for, int8 and 4-bit values take them too."""
    assert cpu_quant.COMPACT_VALUE_BITS == (5, 6) and cpu_quant.HALF_SCALE_VALUE_BITS == (5,)
    gen = torch.Generator().manual_seed(21)
    n, k = 64, 256
    q4 = make_weight(n, k, 4, 32, True, gen)
    q4_exact = QuantizedWeight(q4.qweight, q4.scales.half().float(), q4.offsets.half().float(), 4, 32)
    cases = [  # weight, (value bits, float16 scales, bits a weight) chosen, asked for float16 scales
        (make_compact_weight(n, k, 5, 32, gen), (5, True, 5.5), 5.5),
        (make_compact_weight(n, k, 5, 64, gen), (5, True, 5.5), 5.5),  # a scale per block of 32
        (make_compact_weight(n, k, 5, 16, gen), (5, False, 7.0), None),  # float16 scales: groups >= 32
        (make_compact_weight(n, k, 6, 16, gen), (6, False, 8.0), None),
        (make_compact_weight(n, k, 8, 32, gen), (8, False, 9.0), 8.5),
        (q4, (4, False, 6.0), None),
        (q4_exact, (4, False, 6.0), 5.0),
    ]
    for qw, (value_bits, half, bits_per_weight), half_bits_per_weight in cases:
        assert cpu_quant.choose_layout(qw) == (value_bits, half)
        packed = cpu_quant.pack(qw)
        assert (packed.value_bits, packed.half_scales) == (value_bits, half)
        assert packed.layout == f"q{value_bits}+{'f16' if half else 'f32'}"
        assert packed.nbytes() * 8 / (n * k) == bits_per_weight
        plain = cpu_quant.pack(qw, value_bits=qw.bits, half_scales=False)
        assert (plain.value_bits, plain.half_scales, plain.layout) == (qw.bits, False, f"q{qw.bits}+f32")
        if half_bits_per_weight is None:
            with pytest.raises(ConfigError, match="float16"):
                cpu_quant.pack(qw, half_scales=True)
        else:
            asked = cpu_quant.pack(qw, half_scales=True)
            assert asked.half_scales and asked.nbytes() * 8 / (n * k) == half_bits_per_weight


def test_compact_layout_not_chosen_when_lossy(lib) -> None:
    """A scale (or offset) that is not exactly a float16, a value of 16 or -17 (or 32 / -33), offsets:
    the wider layout; asking for the narrower one raises."""
    gen = torch.Generator().manual_seed(22)
    base = make_compact_weight(40, 64, 5, 32, gen)

    def with_value(v: int) -> QuantizedWeight:
        q = base.qweight.clone()
        q[7, 13] = v
        return QuantizedWeight(q, base.scales, None, 8, 32)

    for v, value_bits in ((15, 5), (-16, 5), (16, 6), (-17, 6), (31, 6), (-32, 6), (32, 8), (-33, 8)):
        qw = with_value(v)
        assert cpu_quant.pack(qw).value_bits == value_bits, v
        if value_bits > 5:
            with pytest.raises(ConfigError):
                cpu_quant.pack(qw, value_bits=5)
        if value_bits > 6:
            with pytest.raises(ConfigError):
                cpu_quant.pack(qw, value_bits=6)
    scales = base.scales.clone()
    scales[3, 1] = 0.1  # float32 0.1 is not a float16
    inexact = QuantizedWeight(base.qweight, scales, None, 8, 32)
    packed = cpu_quant.pack(inexact)
    assert (packed.value_bits, packed.half_scales) == (5, False)
    with pytest.raises(ConfigError, match="float16"):
        cpu_quant.pack(inexact, half_scales=True)
    # offsets: no compact values; float16 offsets only when asked for and exact
    with_offsets = QuantizedWeight(base.qweight, base.scales, torch.full_like(base.scales, 0.5), 8, 32)
    assert cpu_quant.pack(with_offsets).layout == "q8+f32"
    assert cpu_quant.pack(with_offsets, half_scales=True).layout == "q8+f16"
    with pytest.raises(ConfigError):
        cpu_quant.pack(with_offsets, value_bits=5)
    offsets = torch.full_like(base.scales, 0.5)
    offsets[0, 0] = 1e-8  # below float16's smallest subnormal
    with pytest.raises(ConfigError, match="float16"):
        cpu_quant.pack(QuantizedWeight(base.qweight, base.scales, offsets, 8, 32), half_scales=True)
    q4 = make_weight(40, 64, 4, 32, True, gen)
    with pytest.raises(ConfigError):
        cpu_quant.pack(q4, value_bits=5)
    with pytest.raises(ConfigError):
        cpu_quant.CpuQuantWeight(
            cpu_quant.pack(with_offsets).data, (40, 64), 8, 32, True, lib, value_bits=5, half_scales=False
        )


@pytest.mark.parametrize("value_bits,group", [(5, 32), (6, 16), (8, 32), (5, 64), (4, 32)])
def test_compact_layout_bitwise_equal_to_int8(lib, value_bits: int, group: int) -> None:
    """Every layout gives the very bits of the plain int8 (4-bit) + float32-scale layout (the
    integer dot products are exact whatever the storage): 5-bit values with float16 or float32
    scales, as 6-bit values; 6-bit values; int8 and 4-bit values with float16 scales (and
    offsets). For 1 to 100 rows (100: 5-bit tiles expanded before their sweeps), odd N, float32
    and bfloat16, with and without bias."""
    gen = torch.Generator().manual_seed(23 + value_bits + group)
    for n, k in ((37, 256), (1001, 896), (45, 4864), (21, 96)):
        if k % group:
            continue
        if value_bits == 4:
            qw = make_weight(n, k, 4, group, True, gen)
            qw = QuantizedWeight(qw.qweight, qw.scales.half().float(), qw.offsets.half().float(), 4, group)
        else:
            qw = make_compact_weight(n, k, value_bits, group, gen)
        plain = cpu_quant.pack(qw, value_bits=qw.bits, half_scales=False)
        layouts = [cpu_quant.pack(qw)]
        if value_bits == 5:
            layouts += [cpu_quant.pack(qw, half_scales=False), cpu_quant.pack(qw, value_bits=6)]
        if value_bits in (8, 4):
            layouts.append(cpu_quant.pack(qw, half_scales=True))
        assert layouts[0].value_bits == value_bits
        assert layouts[0].half_scales == (value_bits == 5)
        assert all(p.nbytes() < plain.nbytes() for p in layouts if p.layout != plain.layout)
        bias = torch.randn(n, generator=gen)
        for m in (*ROWS, 100):
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(m, k, generator=gen).to(dtype)
                for b in (None, bias):
                    want = cpu_quant.linear(x, plain, b)
                    for packed in layouts:
                        assert torch.equal(cpu_quant.linear(x, packed, b), want), (n, k, m, dtype, packed.layout)
        check_against_references(cpu_quant.linear(x, layouts[0], bias), x, qw, bias)
