"""The weight-only quantized linear kernel against its torch reference, run by the Triton interpreter.

Fresh random weights and activations per case (seeded from the parameters); relative max-norm
error <= 1e-5 in float32 and <= 2e-2 in bfloat16/float16, as in tests/kernels/test_kernels.py. Outputs
the launcher allocates are NaN-filled, so an element the kernel does not write fails. The
reference itself is checked against a float64 computation that unpacks the weights its own way.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from tritonlm.config import env
from tritonlm.errors import ConfigError
from tritonlm.kernels import _utils
from tritonlm.kernels import quant_matmul as qm
from tritonlm.kernels import reference as ref
from tritonlm.kernels.quant_matmul import pack_quant_weight, quant_linear
from tritonlm.kernels.qweight import QuantizedWeight, pack_int4, quantize_rtn

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DT_IDS = ["fp32", "bf16", "fp16"]

DEVICE = "cpu" if env().triton_interpret else ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")


def gen(*key: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def randn(g: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape, generator=g)).to(device=DEVICE, dtype=dtype)


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    """max |out - expected| / max |expected|; inf if out has a NaN (an unwritten element)."""
    assert out.shape == expected.shape, (out.shape, expected.shape)
    assert out.dtype == expected.dtype, (out.dtype, expected.dtype)
    if torch.isnan(out).any():
        return math.inf
    diff = (out.double() - expected.double()).abs().max().item()
    return diff / max(expected.double().abs().max().item(), 1e-30)


def random_weight(g: torch.Generator, n: int, k: int, bits: int, group: int, offsets: bool) -> QuantizedWeight:
    """Random integers over the whole range, per-group scales of both signs, optional offsets."""
    if bits == 8:
        q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int16).to(torch.int8)
    else:
        q = pack_int4(torch.randint(0, 16, (n, k), generator=g))
    scales = torch.rand(n, k // group, generator=g) * 0.04 + 0.005
    scales = torch.where(torch.rand(n, k // group, generator=g) < 0.2, -scales, scales)
    off = 0.2 * torch.randn(n, k // group, generator=g) if offsets else None
    return QuantizedWeight(q, scales, off, bits, group).to(DEVICE)


@pytest.fixture(autouse=True)
def nan_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torch.empty / empty_like return NaN-filled float tensors (launchers allocate with them)."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))


# (M, N, K): M 1 and 3 take the decode config, 17 the large-M one; N not a multiple of any BLOCK_N
SHAPES = [(1, 40, 64), (3, 136, 96), (17, 72, 160)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("group", [16, 32])
@pytest.mark.parametrize("offsets", [False, True], ids=["no-offset", "offset"])
@pytest.mark.parametrize("bits", [4, 8])
def test_quant_linear(bits: int, offsets: bool, group: int, dtype: torch.dtype) -> None:
    for m, n, k in SHAPES:
        g = gen("quant", bits, offsets, group, dtype, m, n, k)
        weight = random_weight(g, n, k, bits, group, offsets)
        x = randn(g, m, k, dtype=dtype)
        x0 = x.clone()
        for bias in (None, randn(g, n, dtype=dtype), randn(g, n)):
            out = quant_linear(x, weight, bias)
            err = rel_err(out, ref.quant_linear(x, weight, bias))
            assert err <= TOL[dtype], (m, n, k, None if bias is None else bias.dtype, err)
        assert torch.equal(x, x0), "x must not be modified"


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("m", [5, 130])  # decode config (groups longer than BLOCK_K=128), large-M config (3 M tiles)
def test_quant_linear_long_groups(bits: int, m: int) -> None:
    for group in (64, 128, 256):
        g = gen("quant-groups", bits, m, group)
        weight = random_weight(g, 48, 512, bits, group, offsets=True)
        x = randn(g, m, 512, dtype=torch.float32)
        assert rel_err(quant_linear(x, weight), ref.quant_linear(x, weight)) <= TOL[torch.float32], group


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bits", [4, 8])
def test_quant_linear_qwen_sized(bits: int, dtype: torch.dtype) -> None:
    """K=896 (Qwen2.5-0.5B hidden size): 7 K steps of the decode config; weights from quantize_rtn."""
    g = gen("quant-long", bits, dtype)
    weight = quantize_rtn(randn(g, 256, 896, scale=0.05), bits, group_size=32)
    bias = randn(g, 256, dtype=dtype, scale=0.1)
    for m in (1, 4):
        x = randn(g, m, 896, dtype=dtype)
        assert rel_err(quant_linear(x, weight, bias), ref.quant_linear(x, weight, bias)) <= TOL[dtype], m


def test_quant_linear_strided_rows_and_empty() -> None:
    g = gen("quant-strided")
    weight = random_weight(g, 40, 64, 4, 16, offsets=True)
    x = randn(g, 6, 100)[:, 20:84]  # row stride 100, last dim contiguous
    assert rel_err(quant_linear(x, weight), ref.quant_linear(x, weight)) <= TOL[torch.float32]
    out = quant_linear(randn(g, 0, 64), weight)
    assert out.shape == (0, 40)


def test_pack_quant_weight() -> None:
    g = gen("quant-pack")
    weight = random_weight(g, 40, 64, 8, 16, offsets=True)
    assert pack_quant_weight(weight) is weight
    # scales stored transposed: same values, not contiguous; the launcher refuses, packing fixes it
    odd = QuantizedWeight(weight.qweight, weight.scales.t().contiguous().t(), weight.offsets, 8, 16)
    x = randn(g, 3, 64)
    with pytest.raises(ValueError, match="contiguous"):
        quant_linear(x, odd)
    packed = pack_quant_weight(odd)
    assert packed.scales.is_contiguous() and torch.equal(packed.scales, weight.scales)
    assert rel_err(quant_linear(x, packed), ref.quant_linear(x, weight)) <= TOL[torch.float32]


@pytest.mark.parametrize("bits", [4, 8])
def test_reference_quant_linear_vs_float64(bits: int) -> None:
    g = gen("quant64", bits)
    n, k, group = 24, 96, 32
    weight = random_weight(g, n, k, bits, group, offsets=True)
    x, bias = randn(g, 5, k), randn(g, n)
    qw = weight.qweight.cpu().to(torch.int64)
    if bits == 8:
        q = qw.double()
    else:
        q = torch.empty(n, k, dtype=torch.float64)
        q[:, 0::2] = (qw % 16).double()  # even inputs: low nibble
        q[:, 1::2] = (qw // 16).double()
    s = weight.scales.cpu().double().repeat_interleave(group, dim=1)
    o = weight.offsets.cpu().double().repeat_interleave(group, dim=1)
    w64 = q * s + o
    naive = x.cpu().double() @ w64.T + bias.cpu().double()
    assert rel_err(ref.quant_linear(x, weight, bias).cpu().double(), naive) <= 1e-6
    xb = x.to(torch.bfloat16)
    naive_b = xb.cpu().double() @ w64.T
    assert rel_err(ref.quant_linear(xb, weight).cpu().double(), naive_b) <= 8e-3


def test_quant_linear_rejects_bad_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    g = gen("quant-args")
    weight = random_weight(g, 40, 64, 4, 16, offsets=False)
    x = randn(g, 3, 64)
    with pytest.raises(ValueError, match="QuantizedWeight"):
        quant_linear(x, weight.dequantize())
    with pytest.raises(ValueError, match="2-D"):
        quant_linear(randn(g, 2, 3, 64), weight)
    with pytest.raises(ValueError, match="dtype"):
        quant_linear(torch.zeros(3, 64, dtype=torch.int32, device=DEVICE), weight)
    with pytest.raises(ValueError, match="expected"):
        quant_linear(randn(g, 3, 32), weight)
    with pytest.raises(ValueError, match="contiguous"):
        quant_linear(randn(g, 64, 3).t(), weight)
    with pytest.raises(ValueError, match="shape"):
        quant_linear(x, weight, randn(g, 41))
    with pytest.raises(ValueError, match="dtype"):
        quant_linear(x.to(torch.bfloat16), weight, randn(g, 40, dtype=torch.float16))
    with pytest.raises(ValueError, match="dtype"):
        quant_linear(x, weight, randn(g, 40, dtype=torch.bfloat16))  # bf16 bias, fp32 x
    monkeypatch.setattr(qm, "MAX_GRID_N", 1)
    with pytest.raises(ConfigError, match="grid"):
        quant_linear(x, weight)
    monkeypatch.setattr(_utils, "interpreting", lambda: False)  # CPU tensors without the interpreter: refused
    with pytest.raises(ValueError, match="CUDA"):
        quant_linear(x.cpu(), weight.to("cpu"))
