"""Every Triton kernel against its torch reference, run by the Triton interpreter on the CPU.

Fresh random inputs per test (seeded from the parameters), tolerances from the issue:
relative (max-norm) error <= 1e-5 in float32 (attention 1e-4), <= 2e-2 in bfloat16. Every
tensor a launcher allocates with torch.empty/empty_like is filled with NaN here, and buffers
the ops write into (KV caches, q/k of the in-place rotary) are NaN-padded, so an element a
kernel forgets to write, or writes where it must not, fails. The reference ops themselves are
checked against naive float64 computations.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from tritonlm.config import env
from tritonlm.errors import ConfigError
from tritonlm.kernels import _utils, get_ops
from tritonlm.kernels import reference as ref
from tritonlm.kernels.activation import silu_and_mul
from tritonlm.kernels.bitmask import apply_token_bitmask
from tritonlm.kernels.decode_attention import CONFIGS as DECODE_CONFIGS
from tritonlm.kernels.decode_attention import paged_decode_attention
from tritonlm.kernels.kv_store import store_kv_cache
from tritonlm.kernels.prefill_attention import prefill_attention
from tritonlm.kernels.rms_norm import fused_add_rms_norm, rms_norm
from tritonlm.kernels.rotary import rotary_embedding

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
ATTN_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.bfloat16]
DT_IDS = ["fp32", "bf16"]

# Under the interpreter (the default, tests/conftest.py) tensors live on the CPU; with
# TRITON_INTERPRET=0 and a CUDA device the same tests run the compiled kernels on the GPU.
DEVICE = "cpu" if env().triton_interpret else ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")


def gen(*key: object) -> torch.Generator:
    """A generator seeded from the test's parameters: fresh, different inputs per case."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def randn(g: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape, generator=g, device="cpu")).to(device=DEVICE, dtype=dtype)


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    """max |out - expected| / max |expected|; inf if out has a NaN (an unwritten element)."""
    assert out.shape == expected.shape, (out.shape, expected.shape)
    assert out.dtype == expected.dtype, (out.dtype, expected.dtype)
    if torch.isnan(out).any():
        return math.inf
    diff = (out.double() - expected.double()).abs().max().item()
    return diff / max(expected.double().abs().max().item(), 1e-30)


@pytest.fixture(autouse=True)
def on_device():
    """Factory calls without a device create tensors on DEVICE (a no-op on the CPU)."""
    if DEVICE == "cpu":
        yield
        return
    torch.set_default_device(DEVICE)
    yield
    torch.set_default_device(None)


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


def test_interpret_backend_resolves_to_these_kernels() -> None:
    ops = get_ops("interpret")
    assert ops.rms_norm is rms_norm and ops.fused_add_rms_norm is fused_add_rms_norm
    assert ops.rotary_embedding is rotary_embedding and ops.store_kv_cache is store_kv_cache
    assert ops.paged_decode_attention is paged_decode_attention and ops.prefill_attention is prefill_attention
    assert ops.silu_and_mul is silu_and_mul and ops.apply_token_bitmask is apply_token_bitmask


# ---- RMSNorm --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(
    "shape",
    [(1, 896), (17, 128), (2, 15, 896), (16, 5000)],  # 5000 > the largest one-pass block: looping variant
    ids=str,
)
def test_rms_norm(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    g = gen("rms", dtype, shape)
    x = randn(g, *shape, dtype=dtype, scale=3.0)
    residual = randn(g, *shape, dtype=dtype)
    weight = (1.0 + 0.1 * randn(g, shape[-1])).to(dtype)
    x0, r0 = x.clone(), residual.clone()
    eps = 1e-6
    assert rel_err(rms_norm(x, weight, eps), ref.rms_norm(x, weight, eps)) <= TOL[dtype]
    summed, normed = fused_add_rms_norm(x, residual, weight, eps)
    ref_summed, ref_normed = ref.fused_add_rms_norm(x, residual, weight, eps)
    assert rel_err(summed, ref_summed) <= TOL[dtype]
    assert rel_err(normed, ref_normed) <= TOL[dtype]
    assert torch.equal(x, x0) and torch.equal(residual, r0), "inputs must not be modified"


def test_rms_norm_eps_matters() -> None:
    """Activations small enough that eps changes the result by ~50%: a wrong eps fails."""
    g = gen("rms-eps")
    x, r, weight = randn(g, 5, 896, scale=1e-3), randn(g, 5, 896, scale=1e-3), randn(g, 896)
    assert rel_err(rms_norm(x, weight, 1e-6), ref.rms_norm(x, weight, 1e-6)) <= TOL[torch.float32]
    _, normed = fused_add_rms_norm(x, r, weight, 1e-6)
    assert rel_err(normed, ref.fused_add_rms_norm(x, r, weight, 1e-6)[1]) <= TOL[torch.float32]


def test_rms_norm_strided_rows() -> None:
    g = gen("rms-strided")
    base = randn(g, 9, 300)
    x = base[:, 22:150]  # row stride 300, last dim contiguous
    weight = randn(g, 128)
    assert rel_err(rms_norm(x, weight, 1e-5), ref.rms_norm(x, weight, 1e-5)) <= TOL[torch.float32]


def test_reference_rms_norm_vs_float64() -> None:
    g = gen("rms64")
    x, weight = randn(g, 7, 896, scale=2.0), randn(g, 896)
    x64 = x.double()
    naive = x64 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + 1e-6) * weight.double()
    assert rel_err(ref.rms_norm(x, weight, 1e-6).double(), naive) <= 1e-6
    r = randn(g, 7, 896)
    summed, normed = ref.fused_add_rms_norm(x, r, weight, 1e-6)
    s64 = x64 + r.double()
    assert rel_err(summed.double(), s64) <= 1e-7
    assert (
        rel_err(normed.double(), s64 / torch.sqrt((s64 * s64).mean(-1, keepdim=True) + 1e-6) * weight.double()) <= 1e-6
    )


# ---- rotary -----------------------------------------------------------------------------------
def _qkv_views(g: torch.Generator, t: int, hq: int, hk: int, d: int, dtype: torch.dtype):
    """q, k as the model passes them: strided views into one fused [T, (Hq + 2 Hk) D] buffer (v = NaN)."""
    qkv = torch.full((t, (hq + 2 * hk) * d), float("nan"), dtype=dtype)
    qkv[:, : (hq + hk) * d] = randn(g, t, (hq + hk) * d, dtype=dtype, scale=2.0)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(t, hk, d)
    return qkv, q, k


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(("hq", "hk", "d"), [(14, 2, 64), (4, 4, 128)], ids=["14-2-d64", "4-4-d128"])
@pytest.mark.parametrize("num_tokens", [1, 15, 17, 100])
def test_rotary(dtype: torch.dtype, hq: int, hk: int, d: int, num_tokens: int) -> None:
    g = gen("rope", dtype, hq, hk, d, num_tokens)
    theta = 1_000_000.0 if d == 64 else 10_000.0
    cache = ref.rope_cos_sin_cache(d, 4096, theta, DEVICE)
    positions = torch.randint(0, 4096, (num_tokens,), generator=g, device="cpu").to(DEVICE)  # arbitrary, unsorted
    qkv, q, k = _qkv_views(g, num_tokens, hq, hk, d, dtype)
    assert num_tokens == 1 or not q.is_contiguous()
    expected = qkv.clone()
    eq = expected[:, : hq * d].view(num_tokens, hq, d)
    ek = expected[:, hq * d : (hq + hk) * d].view(num_tokens, hk, d)
    ref.rotary_embedding(eq, ek, positions, cache)
    rotary_embedding(q, k, positions, cache)
    assert rel_err(q, eq) <= TOL[dtype]
    assert rel_err(k, ek) <= TOL[dtype]
    assert torch.isnan(qkv[:, (hq + hk) * d :]).all(), "the v part of the buffer must stay untouched"


def test_rotary_long() -> None:
    """1000 tokens at positions 0..999 (a long prompt), 14/2 heads."""
    g = gen("rope-long")
    cache = ref.rope_cos_sin_cache(64, 32768, 1e6, DEVICE)
    positions = torch.arange(1000)
    qkv, q, k = _qkv_views(g, 1000, 14, 2, 64, torch.float32)
    expected = qkv.clone()
    eq, ek = expected[:, : 14 * 64].view(1000, 14, 64), expected[:, 14 * 64 : 16 * 64].view(1000, 2, 64)
    ref.rotary_embedding(eq, ek, positions, cache)
    rotary_embedding(q, k, positions, cache)
    assert rel_err(q, eq) <= 1e-5 and rel_err(k, ek) <= 1e-5


def test_rotary_int32_positions_and_contiguous() -> None:
    g = gen("rope-int32")
    cache = ref.rope_cos_sin_cache(64, 512, 1e6, DEVICE)
    q, k = randn(g, 15, 3, 64), randn(g, 15, 1, 64)
    pos = torch.arange(100, 115, dtype=torch.int32)
    eq, ek = q.clone(), k.clone()
    ref.rotary_embedding(eq, ek, pos.long(), cache)
    rotary_embedding(q, k, pos, cache)
    assert rel_err(q, eq) <= 1e-5 and rel_err(k, ek) <= 1e-5


def test_reference_rotary_vs_float64() -> None:
    g = gen("rope64")
    d, theta = 64, 1e6
    q, k = randn(g, 9, 14, d), randn(g, 9, 2, d)
    positions = torch.tensor([0, 1, 5, 17, 100, 999, 4000, 12345, 32767])
    q64, k64 = q.double(), k.double()
    ref.rotary_embedding(q, k, positions, ref.rope_cos_sin_cache(d, 32768, theta, DEVICE))
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = positions.double()[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1)[:, None], torch.cat([ang.sin(), ang.sin()], -1)[:, None]
    for x32, x64 in ((q, q64), (k, k64)):
        rot = torch.cat([-x64[..., d // 2 :], x64[..., : d // 2]], -1)
        # fp32 angles of positions up to 32k: absolute error ~ 32767 * 2^-24 rad
        assert rel_err(x32.double(), x64 * cos + rot * sin) <= 5e-3


# ---- paged KV store -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(("hk", "d"), [(2, 64), (4, 128)], ids=["hk2-d64", "hk4-d128"])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_tokens", [1, 16, 17, 100])
def test_store_kv_cache(dtype: torch.dtype, hk: int, d: int, block_size: int, num_tokens: int) -> None:
    g = gen("kv", dtype, hk, d, block_size, num_tokens)
    num_blocks = (num_tokens + block_size - 1) // block_size + 3
    k_cache = torch.full((num_blocks, block_size, hk, d), float("nan"), dtype=dtype)
    v_cache = k_cache.clone()
    # k, v as strided views of a fused buffer; distinct random slots, every third token padding
    buf = randn(g, num_tokens, 3 * hk * d, dtype=dtype)
    k, v = buf[:, hk * d : 2 * hk * d].view(num_tokens, hk, d), buf[:, 2 * hk * d :].view(num_tokens, hk, d)
    slots = torch.randperm(num_blocks * block_size, generator=g, device="cpu")[:num_tokens].to(DEVICE)
    slots[1::3] = -1
    ek, ev = k_cache.clone(), v_cache.clone()
    ref.store_kv_cache(k, v, ek, ev, slots)
    store_kv_cache(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache.isnan(), ek.isnan()) and torch.equal(v_cache.isnan(), ev.isnan())
    assert torch.equal(k_cache.nan_to_num(), ek.nan_to_num()) and torch.equal(v_cache.nan_to_num(), ev.nan_to_num())
    written = int((slots >= 0).sum())
    assert int((~k_cache.isnan()).sum()) == written * hk * d


# ---- paged decode attention -------------------------------------------------------------------
def _paged_cache(g: torch.Generator, lens: list[int], block_size: int, hk: int, d: int, dtype: torch.dtype):
    """NaN-filled caches with random contents at each sequence's positions, in shuffled blocks."""
    per_seq = [(n + block_size - 1) // block_size for n in lens]
    num_blocks = sum(per_seq) + 2
    k_cache = torch.full((num_blocks, block_size, hk, d), float("nan"), dtype=dtype)
    v_cache = k_cache.clone()
    perm = torch.randperm(num_blocks, generator=g, device="cpu").tolist()
    width = max(max(per_seq), 1) + 1  # one spare column: entries past a sequence's blocks are unused
    tables = torch.full((len(lens), width), 10**6, dtype=torch.int32)  # garbage beyond the used blocks
    i = 0
    for b, (n, nb) in enumerate(zip(lens, per_seq, strict=True)):
        tables[b, :nb] = torch.tensor(perm[i : i + nb], dtype=torch.int32)
        i += nb
        slots = ref._gather_slots(tables[b], n, block_size)
        k_cache.view(-1, hk, d)[slots] = randn(g, n, hk, d, dtype=dtype)
        v_cache.view(-1, hk, d)[slots] = randn(g, n, hk, d, dtype=dtype)
    return k_cache, v_cache, tables


DECODE_CASES = {
    "14-2-d64": (14, 2, 64, [1, 15, 16, 17, 100, 1000]),
    "4-4-d128": (4, 4, 128, [17, 1, 100, 16]),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case", list(DECODE_CASES))
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("split_kv", [False, True], ids=["nosplit", "split"])
def test_paged_decode_attention(dtype: torch.dtype, case: str, block_size: int, split_kv: bool) -> None:
    hq, hk, d, lens = DECODE_CASES[case]
    g = gen("decode", dtype, case, block_size, split_kv)
    k_cache, v_cache, tables = _paged_cache(g, lens, block_size, hk, d, dtype)
    q = randn(g, len(lens), hq, d, dtype=dtype)
    context_lens = torch.tensor(lens, dtype=torch.int32)
    scale = d**-0.5
    expected = ref.paged_decode_attention(
        q, k_cache, v_cache, tables.clamp(max=k_cache.shape[0] - 1), context_lens, scale
    )
    out = paged_decode_attention(q, k_cache, v_cache, tables, context_lens, scale, split_kv=split_kv)
    assert rel_err(out, expected) <= ATTN_TOL[dtype]


def test_decode_split_heuristic_matches() -> None:
    """The automatic choice (split on for this small batch of long contexts) agrees with the reference."""
    g = gen("decode-auto")
    lens = [1000, 300]
    k_cache, v_cache, tables = _paged_cache(g, lens, 32, 2, 64, torch.float32)
    q = randn(g, 2, 14, 64)
    cl = torch.tensor(lens, dtype=torch.int64)
    expected = ref.paged_decode_attention(q, k_cache, v_cache, tables.clamp(max=k_cache.shape[0] - 1), cl, 0.125)
    assert rel_err(paged_decode_attention(q, k_cache, v_cache, tables, cl, 0.125), expected) <= 1e-4


def _naive_attention64(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float, mask: torch.Tensor):
    """q [Lq, Hq, D], keys/values [L, Hk, D], mask [Lq, L] -> [Lq, Hq, D] in float64."""
    group = q.shape[1] // keys.shape[1]
    kk = keys.double().repeat_interleave(group, dim=1)
    vv = values.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), kk) * scale
    scores = scores.masked_fill(~mask[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), vv)


def test_reference_decode_attention_vs_float64() -> None:
    g = gen("decode64")
    lens = [1, 17, 100]
    k_cache, v_cache, tables = _paged_cache(g, lens, 16, 2, 64, torch.float32)
    q = randn(g, 3, 14, 64)
    out = ref.paged_decode_attention(
        q, k_cache, v_cache, tables.clamp(max=k_cache.shape[0] - 1), torch.tensor(lens), 0.125
    )
    for b, n in enumerate(lens):
        slots = ref._gather_slots(tables[b], n, 16)
        keys, values = k_cache.view(-1, 2, 64)[slots], v_cache.view(-1, 2, 64)[slots]
        naive = _naive_attention64(q[b : b + 1], keys, values, 0.125, torch.ones(1, n, dtype=torch.bool))
        assert rel_err(out[b : b + 1].double(), naive) <= 1e-5


# ---- prefill attention ------------------------------------------------------------------------
PREFILL_CASES = {
    # (hq, hk, d, new tokens per sequence, cached tokens before them)
    "14-2-d64": (14, 2, 64, [1, 15, 16, 17, 100], [15, 0, 16, 33, 0]),
    "4-4-d128": (4, 4, 128, [17, 1, 100, 15, 16], [0, 99, 17, 1, 32]),
    "2-1-d64": (2, 1, 64, [], []),  # lengths given by the test
}


def _prefill_inputs(g: torch.Generator, case: str, block_size: int, dtype: torch.dtype, q_lens=None, cached=None):
    hq, hk, d, q_lens0, cached0 = PREFILL_CASES[case]
    q_lens = q_lens0 if q_lens is None else q_lens
    cached = cached0 if cached is None else cached
    ctx = [a + b for a, b in zip(q_lens, cached, strict=True)]
    k_cache, v_cache, tables = _paged_cache(g, ctx, block_size, hk, d, dtype)
    q = randn(g, sum(q_lens), hq, d, dtype=dtype)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return q, k_cache, v_cache, cu, torch.tensor(ctx, dtype=torch.int32), tables, d**-0.5


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case", ["14-2-d64", "4-4-d128"])
@pytest.mark.parametrize("block_size", [16, 32])
def test_prefill_attention(dtype: torch.dtype, case: str, block_size: int) -> None:
    g = gen("prefill", dtype, case, block_size)
    q, k_cache, v_cache, cu, ctx, tables, scale = _prefill_inputs(g, case, block_size, dtype)
    safe_tables = tables.clamp(max=k_cache.shape[0] - 1)
    expected = ref.prefill_attention(q, k_cache, v_cache, cu, ctx, safe_tables, scale)
    out = prefill_attention(q, k_cache, v_cache, cu, ctx, tables, scale)
    assert rel_err(out, expected) <= ATTN_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_prefill_attention_long(dtype: torch.dtype) -> None:
    """A 1000-token prompt behind a 24-token cached prefix, batched with a short sequence (2/1 heads:
    the interpreter's cost grows with heads x length^2)."""
    g = gen("prefill-long", dtype)
    q, k_cache, v_cache, cu, ctx, tables, scale = _prefill_inputs(
        g, "2-1-d64", 32, dtype, q_lens=[3, 1000], cached=[5, 24]
    )
    expected = ref.prefill_attention(q, k_cache, v_cache, cu, ctx, tables.clamp(max=k_cache.shape[0] - 1), scale)
    out = prefill_attention(q, k_cache, v_cache, cu, ctx, tables, scale)
    assert rel_err(out, expected) <= ATTN_TOL[dtype]


def test_reference_prefill_attention_vs_float64() -> None:
    g = gen("prefill64")
    q, k_cache, v_cache, cu, ctx, tables, scale = _prefill_inputs(g, "14-2-d64", 16, torch.float32)
    tables = tables.clamp(max=k_cache.shape[0] - 1)
    out = ref.prefill_attention(q, k_cache, v_cache, cu, ctx, tables, scale)
    for b in range(ctx.shape[0]):
        lo, hi, n = int(cu[b]), int(cu[b + 1]), int(ctx[b])
        slots = ref._gather_slots(tables[b], n, 16)
        keys, values = k_cache.view(-1, 2, 64)[slots], v_cache.view(-1, 2, 64)[slots]
        q_pos = torch.arange(n - (hi - lo), n)[:, None]
        naive = _naive_attention64(q[lo:hi], keys, values, scale, torch.arange(n)[None, :] <= q_pos)
        assert rel_err(out[lo:hi].double(), naive) <= 1e-5


def test_prefill_matches_decode_for_single_tokens() -> None:
    """A batch of one-token prefills is a decode step: both kernels agree."""
    g = gen("prefill-vs-decode")
    lens = [1, 16, 17, 100]
    k_cache, v_cache, tables = _paged_cache(g, lens, 16, 2, 64, torch.float32)
    q = randn(g, 4, 14, 64)
    cl = torch.tensor(lens, dtype=torch.int32)
    cu = torch.arange(5, dtype=torch.int32)
    a = prefill_attention(q, k_cache, v_cache, cu, cl, tables, 0.125)
    b = paged_decode_attention(q, k_cache, v_cache, tables, cl, 0.125)
    assert rel_err(a, b) <= 1e-5


# ---- SiLU-and-mul, token bitmask ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shape", [(1, 2 * 4864), (17, 2 * 300), (2, 15, 2 * 100)], ids=str)
def test_silu_and_mul(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    g = gen("silu", dtype, shape)
    x = randn(g, *shape, dtype=dtype, scale=3.0)
    assert rel_err(silu_and_mul(x), ref.silu_and_mul(x)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(
    ("rows", "vocab", "words"),
    [(1, 1000, 32), (4, 1000, 30), (3, 2049, 70), (2, 151936, 4748)],  # 30 words cover only 960 tokens
)
def test_apply_token_bitmask(dtype: torch.dtype, rows: int, vocab: int, words: int) -> None:
    g = gen("bitmask", dtype, rows, vocab, words)
    logits = randn(g, rows, vocab, dtype=dtype)
    bitmask = torch.randint(-(2**31), 2**31, (rows, words), generator=g, dtype=torch.int64, device="cpu")
    bitmask = bitmask.to(device=DEVICE, dtype=torch.int32)
    bitmask[0, 0] = -1  # all 32 allowed, bit 31 (the sign bit) included
    if words > 1:
        bitmask[0, 1] = 0
    expected = logits.clone()
    ref.apply_token_bitmask(expected, bitmask)
    apply_token_bitmask(logits, bitmask)
    assert torch.equal(logits, expected)
    assert torch.isinf(logits).any() and not torch.isnan(logits).any()


# ---- launcher checks ------------------------------------------------------------------------------
def test_launchers_reject_bad_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w = torch.randn(4, 128), torch.randn(128)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, torch.randn(64), 1e-6)
    with pytest.raises(ValueError, match="dtype"):
        rms_norm(x, w.to(torch.bfloat16), 1e-6)
    with pytest.raises(ValueError, match="contiguous"):
        rms_norm(torch.randn(128, 4).t(), w, 1e-6)
    with pytest.raises(ValueError, match="shape"):
        fused_add_rms_norm(x, torch.randn(3, 128), w, 1e-6)
    with pytest.raises(ValueError, match="even"):
        silu_and_mul(torch.randn(3, 5))
    with pytest.raises(ValueError, match="int32"):
        apply_token_bitmask(torch.randn(2, 64), torch.zeros(2, 2, dtype=torch.int64))
    cache = ref.rope_cos_sin_cache(64, 16, 1e4, DEVICE)
    with pytest.raises(ConfigError, match="head_dim"):
        rotary_embedding(torch.randn(2, 2, 96), torch.randn(2, 1, 96), torch.zeros(2, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="positions"):
        rotary_embedding(torch.randn(2, 2, 64), torch.randn(2, 1, 64), torch.zeros(3, dtype=torch.long), cache)
    kc = torch.zeros(4, 16, 2, 64)
    with pytest.raises(ValueError, match="dtype"):
        store_kv_cache(
            torch.randn(3, 2, 64, dtype=torch.bfloat16),
            torch.randn(3, 2, 64),
            kc,
            kc.clone(),
            torch.zeros(3, dtype=torch.long),
        )
    tables, lens = torch.zeros(2, 2, dtype=torch.int32), torch.ones(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="multiple"):
        paged_decode_attention(torch.randn(2, 3, 64), kc, kc, tables, lens, 0.1)
    with pytest.raises(ConfigError, match="ratio"):
        paged_decode_attention(torch.randn(2, 2 * (DECODE_CONFIGS[64].block_g + 1), 64), kc, kc, tables, lens, 0.1)
    with pytest.raises(ValueError, match="sequences"):
        prefill_attention(torch.randn(3, 4, 64), kc, kc, torch.tensor([0, 3]), lens, tables, 0.1)
    monkeypatch.setattr(_utils, "interpreting", lambda: False)  # CPU tensors without the interpreter: refused
    with pytest.raises(ValueError, match="CUDA"):
        rms_norm(x.cpu(), w.cpu(), 1e-6)
