"""The native small ops (tritonlm.kernels.cpu_ops) against the torch reference (tritonlm.kernels.reference).

rms_norm, fused_add_rms_norm, rotary_embedding, store_kv_cache and silu_and_mul must give the
reference's bits (compared as integers, so -0.0 / +0.0 and NaN payloads count) for float32 and
bfloat16, on fresh random inputs of odd shapes and strided views; paged_decode_attention is
float32 math in another order: within 1e-5 of the output's max-norm for float32 outputs (about
1e-6 expected), one bfloat16 rounding step for bfloat16 outputs, and the same bits for a sequence
alone as in any batch. Every op falls back to the reference when the library is unavailable or
the inputs are outside what it handles.

The library is built into the session's fresh TRITONLM_CACHE_DIR (tests/conftest.py).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from tritonlm.kernels import _native, cpu_ops, reference

pytestmark = pytest.mark.skipif(shutil.which(_native.COMPILER) is None, reason="no C++ compiler")

DTYPES = (torch.float32, torch.bfloat16)
INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


@pytest.fixture(scope="module")
def lib() -> cpu_ops._Library:
    library = cpu_ops.library()
    assert library is not None, "the C++ ops did not build"
    return library


@pytest.fixture
def threads():
    """Restores torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def assert_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    view = INT_VIEW[got.dtype]
    g, w = got.contiguous().view(view), want.contiguous().view(view)
    diff = (g != w).sum().item()
    assert diff == 0, f"{diff} of {got.numel()} values differ"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- rms_norm ----------------------------------------------------------------------------------------
def test_vector_widths_calibrated(lib: cpu_ops._Library) -> None:
    if torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX2"):
        assert lib.rms_width in (8, 16) and lib.silu_width in (8, 16)
    else:
        assert lib.rms_width == lib.silu_width == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [896, 64, 100, 17, 4864])
def test_rms_norm_bitwise(lib: cpu_ops._Library, dtype: torch.dtype, hidden: int) -> None:
    g = gen(hidden + (dtype == torch.bfloat16))
    for rows in (1, 3, 9, 40):
        x = (torch.randn(rows, hidden, generator=g) * 3).to(dtype)
        for w_dtype in DTYPES:
            w = (1 + 0.1 * torch.randn(hidden, generator=g)).to(w_dtype)
            for eps in (1e-6, 1e-5):
                assert_bits(cpu_ops.rms_norm(x, w, eps), reference.rms_norm(x, w, eps))
    w = torch.randn(hidden, generator=g).to(dtype)
    x3 = torch.randn(2, 5, hidden, generator=g).to(dtype)  # leading dims
    assert_bits(cpu_ops.rms_norm(x3, w, 1e-6), reference.rms_norm(x3, w, 1e-6))
    wide = torch.randn(7, hidden + 40, generator=g).to(dtype)[:, 24 : 24 + hidden]  # strided rows
    assert_bits(cpu_ops.rms_norm(wide, w, 1e-6), reference.rms_norm(wide, w, 1e-6))
    # large values (the sum of squares far from 1) and a zero row
    x = torch.randn(4, hidden, generator=g).to(dtype) * 1e3
    x[2] = 0
    assert_bits(cpu_ops.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_bitwise(lib: cpu_ops._Library, dtype: torch.dtype) -> None:
    g = gen(11)
    for hidden in (896, 100, 4864):
        w = (1 + 0.1 * torch.randn(hidden, generator=g)).to(dtype)
        for rows in (1, 2, 9, 40):
            x = torch.randn(rows, hidden, generator=g).to(dtype)
            res = (torch.randn(rows, hidden, generator=g) * 4).to(dtype)
            x0, res0 = x.clone(), res.clone()
            summed, normed = cpu_ops.fused_add_rms_norm(x, res, w, 1e-6)
            want_summed, want_normed = reference.fused_add_rms_norm(x, res, w, 1e-6)
            assert_bits(summed, want_summed)
            assert_bits(normed, want_normed)
            assert_bits(x, x0)
            assert_bits(res, res0)
    # strided operands (a slice of a wider buffer each)
    x = torch.randn(5, 1000, generator=g).to(dtype)[:, 3:899]
    res = torch.randn(5, 900, generator=g).to(dtype)[:, 4:900]
    w = torch.randn(896, generator=g).to(dtype)
    for got, want in zip(
        cpu_ops.fused_add_rms_norm(x, res, w, 1e-6), reference.fused_add_rms_norm(x, res, w, 1e-6), strict=True
    ):
        assert_bits(got, want)


def test_rms_norm_threads(lib: cpu_ops._Library, threads) -> None:
    """Enough rows for both torch and the C++ to use threads: the same bits at 1 and 2 threads."""
    g = gen(5)
    x = torch.randn(77, 896, generator=g).bfloat16()
    res = torch.randn(77, 896, generator=g).bfloat16()
    w = torch.randn(896, generator=g).bfloat16()
    for n in (1, 2):
        torch.set_num_threads(n)
        for got, want in zip(
            cpu_ops.fused_add_rms_norm(x, res, w, 1e-6), reference.fused_add_rms_norm(x, res, w, 1e-6), strict=True
        ):
            assert_bits(got, want)


# ---- silu_and_mul --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_bitwise(lib: cpu_ops._Library, dtype: torch.dtype, threads) -> None:
    """Row lengths around torch's vector chunks (8 / 16 floats, 16 / 32 bfloat16), and row counts
    whose element counts torch splits over its threads mid-row."""
    g = gen(3 + (dtype == torch.bfloat16))
    for n in (1, 2):
        torch.set_num_threads(n)
        for half in (1, 7, 15, 16, 17, 24, 31, 33, 37, 100, 999, 4864, 4865):
            for rows in (1, 3, 7, 33):
                x = torch.empty(rows, 2 * half).uniform_(-12, 12, generator=g).to(dtype)
                assert_bits(cpu_ops.silu_and_mul(x), reference.silu_and_mul(x))
    x = (torch.randn(2, 3, 2 * 4864, generator=g) * 4).to(dtype)  # leading dims
    assert_bits(cpu_ops.silu_and_mul(x), reference.silu_and_mul(x))
    wide = torch.randn(5, 250, generator=g).to(dtype)[:, 10:210]  # strided rows
    assert_bits(cpu_ops.silu_and_mul(wide), reference.silu_and_mul(wide))
    x = torch.tensor([[-200.0, -110.0, -90.0, -0.0, 0.0, 90.0, 110.0, 200.0] * 2]).to(dtype)  # exp's range ends
    assert_bits(cpu_ops.silu_and_mul(x), reference.silu_and_mul(x))


# ---- rotary embedding ----------------------------------------------------------------------------------
def fused_qkv(tokens: int, hq: int, hk: int, d: int, dtype: torch.dtype, g: torch.Generator):
    """A fused [T, (Hq + 2 Hk) D] projection and its q / k / v views, as the model splits it."""
    qkv = torch.randn(tokens, (hq + 2 * hk) * d, generator=g).to(dtype)
    q, k, v = qkv.split([hq * d, hk * d, hk * d], dim=-1)
    return qkv, q.reshape(tokens, hq, d), k.reshape(tokens, hk, d), v.reshape(tokens, hk, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", [(14, 2), (4, 2)])
def test_rotary_embedding_bitwise(lib: cpu_ops._Library, dtype: torch.dtype, head_dim: int, heads) -> None:
    hq, hk = heads
    g = gen(head_dim + hq)
    cache = reference.rope_cos_sin_cache(head_dim, 4096, 1_000_000.0)
    for tokens in (1, 5, 17):
        qkv, q, k, _ = fused_qkv(tokens, hq, hk, head_dim, dtype, g)
        assert tokens == 1 or not (q.is_contiguous() or k.is_contiguous())
        positions = torch.randint(0, 4096, (tokens,), generator=g)
        want = qkv.clone()
        sizes = [hq * head_dim, hk * head_dim, hk * head_dim]
        wq, wk, _ = (t.reshape(tokens, -1, head_dim) for t in want.split(sizes, -1))
        reference.rotary_embedding(wq, wk, positions, cache)
        cpu_ops.rotary_embedding(q, k, positions, cache)
        assert_bits(qkv, want)  # q and k rotated alike, v untouched
    # contiguous q / k of their own
    q = torch.randn(3, hq, head_dim, generator=g).to(dtype)
    k = torch.randn(3, hk, head_dim, generator=g).to(dtype)
    positions = torch.tensor([0, 4095, 7])
    wq, wk = q.clone(), k.clone()
    reference.rotary_embedding(wq, wk, positions, cache)
    cpu_ops.rotary_embedding(q, k, positions, cache)
    assert_bits(q, wq)
    assert_bits(k, wk)


def test_rotary_out_of_range_position(lib: cpu_ops._Library) -> None:
    """Positions past the cache go to the reference (which raises) with nothing written first."""
    cache = reference.rope_cos_sin_cache(64, 16, 10000.0)
    q, k = torch.randn(2, 4, 64), torch.randn(2, 2, 64)
    q0, k0 = q.clone(), k.clone()
    with pytest.raises((IndexError, RuntimeError)):
        cpu_ops.rotary_embedding(q, k, torch.tensor([3, 16]), cache)
    assert_bits(q, q0)
    assert_bits(k, k0)


# ---- store_kv_cache ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cache_dtype", DTYPES)
def test_store_kv_cache_bitwise(lib: cpu_ops._Library, dtype: torch.dtype, cache_dtype: torch.dtype) -> None:
    g = gen(7)
    for hk, d, block in ((2, 64, 16), (2, 128, 32), (4, 64, 32)):
        num_blocks = 6
        _, _, k, v = fused_qkv(9, 14, hk, d, dtype, g)
        k_cache = torch.full((num_blocks, block, hk, d), float("nan"), dtype=cache_dtype)
        v_cache = torch.full_like(k_cache, float("nan"))
        slots = torch.randperm(num_blocks * block, generator=g)[:9]
        slots[[2, 5]] = -1  # padding rows write nothing
        for slot_dtype in (torch.int64, torch.int32):
            got_k, got_v = k_cache.clone(), v_cache.clone()
            want_k, want_v = k_cache.clone(), v_cache.clone()
            cpu_ops.store_kv_cache(k, v, got_k, got_v, slots.to(slot_dtype))
            reference.store_kv_cache(k, v, want_k, want_v, slots.to(slot_dtype))
            assert_bits(got_k, want_k)
            assert_bits(got_v, want_v)
    # a slot past the cache: the reference's error, nothing written
    k_cache = torch.zeros(2, 16, 2, 64, dtype=cache_dtype)
    v_cache = torch.zeros_like(k_cache)
    with pytest.raises((IndexError, RuntimeError)):
        cpu_ops.store_kv_cache(torch.ones(2, 2, 64), torch.ones(2, 2, 64), k_cache, v_cache, torch.tensor([0, 32]))
    if cache_dtype == torch.float32:  # (the reference may have written the valid row before raising)
        assert torch.count_nonzero(k_cache[0, 0]) in (0, k_cache[0, 0].numel())


# ---- paged decode attention ---------------------------------------------------------------------------
def paged_batch(lens: list[int], hq: int, hk: int, d: int, block: int, dtype: torch.dtype, g: torch.Generator):
    """q [B, Hq, D] (a view of a fused qkv), NaN-filled caches holding each sequence's keys at
    scattered blocks, block tables padded with block 0, int32 context lengths."""
    blocks_per = [-(-n // block) for n in lens]
    num_blocks = sum(blocks_per) + 3
    k_cache = torch.full((num_blocks, block, hk, d), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    order = torch.randperm(num_blocks, generator=g).tolist()
    width = max(blocks_per)
    tables = torch.zeros(len(lens), width, dtype=torch.int32)
    for b, n in enumerate(lens):
        mine = [order.pop() for _ in range(blocks_per[b])]
        tables[b, : len(mine)] = torch.tensor(mine, dtype=torch.int32)
        for p in range(n):
            blk, off = mine[p // block], p % block
            k_cache[blk, off] = torch.randn(hk, d, generator=g).to(dtype)
            v_cache[blk, off] = torch.randn(hk, d, generator=g).to(dtype)
    _, q, _, _ = fused_qkv(len(lens), hq, hk, d, dtype, g)
    return q, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32)


def check_attention(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.isfinite(got).all(), "NaN of unwritten cache slots leaked"
    scale = want.float().abs().max().item()
    err = (got.float() - want.float()).abs()
    if got.dtype == torch.float32:
        assert err.max().item() <= 1e-5 * scale, f"max error {err.max().item() / scale:.3g} of the max-norm"
    else:  # one bfloat16 step (at most 2^-7 of the value; for tiny values 2^-16 of the max-norm)
        tol = 2.0**-7 * want.float().abs() + 2.0**-16 * scale
        assert (err <= tol).all(), f"{(err > tol).sum().item()} values beyond one bfloat16 step"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", [(14, 2), (4, 2)])
@pytest.mark.parametrize("block", [16, 32])
def test_paged_decode_attention(
    lib: cpu_ops._Library, dtype: torch.dtype, head_dim: int, heads, block: int, threads
) -> None:
    hq, hk = heads
    g = gen(head_dim * 1000 + hq * 10 + block)
    scale = head_dim**-0.5
    for lens in ([1], [17], [300], [300, 1, 17], [5, 40, 1, 33, 17, 300, 2, 64, 9]):
        q, k_cache, v_cache, tables, ctx = paged_batch(lens, hq, hk, head_dim, block, dtype, g)
        assert len(lens) == 1 or not q.is_contiguous()
        want = reference.paged_decode_attention(q, k_cache, v_cache, tables, ctx, scale)
        got = cpu_ops.paged_decode_attention(q, k_cache, v_cache, tables, ctx, scale)
        check_attention(got, want)
        # batch invariance: each sequence alone, at 1 and 2 threads, gives its row's bits
        for n in (1, 2):
            torch.set_num_threads(n)
            for b in range(len(lens)):
                alone = cpu_ops.paged_decode_attention(
                    q[b : b + 1], k_cache, v_cache, tables[b : b + 1], ctx[b : b + 1], scale
                )
                assert_bits(alone, got[b : b + 1])
        # int64 tables / lengths, a contiguous q: the same bits
        again = cpu_ops.paged_decode_attention(q.contiguous(), k_cache, v_cache, tables.long(), ctx.long(), scale)
        assert_bits(again, got)


def test_paged_decode_attention_float32_q_bf16_cache(lib: cpu_ops._Library) -> None:
    g = gen(21)
    q, k_cache, v_cache, tables, ctx = paged_batch([33, 7], 14, 2, 64, 16, torch.bfloat16, g)
    q = q.float()
    check_attention(
        cpu_ops.paged_decode_attention(q, k_cache, v_cache, tables, ctx, 0.125),
        reference.paged_decode_attention(q, k_cache, v_cache, tables, ctx, 0.125),
    )


# ---- fallbacks ---------------------------------------------------------------------------------------
def run_all_ops(dtype: torch.dtype, head_dim: int = 64) -> list[torch.Tensor]:
    """Every op once on fixed inputs; the outputs and the mutated tensors."""
    g = gen(99)
    x = torch.randn(3, 896, generator=g).to(dtype)
    res = torch.randn(3, 896, generator=g).to(dtype)
    w = torch.randn(896, generator=g).to(dtype)
    out = [cpu_ops.rms_norm(x, w, 1e-6), *cpu_ops.fused_add_rms_norm(x, res, w, 1e-6)]
    out.append(cpu_ops.silu_and_mul(torch.randn(3, 200, generator=g).to(dtype)))
    qkv, q, k, v = fused_qkv(2, 4, 2, head_dim, dtype, g)
    cpu_ops.rotary_embedding(q, k, torch.tensor([3, 9]), reference.rope_cos_sin_cache(head_dim, 16, 10000.0))
    out.append(qkv)
    k_cache = torch.zeros(2, 16, 2, head_dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    cpu_ops.store_kv_cache(k, v, k_cache, v_cache, torch.tensor([0, 1]))
    out += [k_cache, v_cache]
    tables, ctx = torch.tensor([[0], [0]], dtype=torch.int32), torch.tensor([2, 1], dtype=torch.int32)
    out.append(cpu_ops.paged_decode_attention(q, k_cache, v_cache, tables, ctx, 0.125))
    return out


def run_all_reference(dtype: torch.dtype, head_dim: int = 64) -> list[torch.Tensor]:
    g = gen(99)
    x = torch.randn(3, 896, generator=g).to(dtype)
    res = torch.randn(3, 896, generator=g).to(dtype)
    w = torch.randn(896, generator=g).to(dtype)
    out = [reference.rms_norm(x, w, 1e-6), *reference.fused_add_rms_norm(x, res, w, 1e-6)]
    out.append(reference.silu_and_mul(torch.randn(3, 200, generator=g).to(dtype)))
    qkv, q, k, v = fused_qkv(2, 4, 2, head_dim, dtype, g)
    reference.rotary_embedding(q, k, torch.tensor([3, 9]), reference.rope_cos_sin_cache(head_dim, 16, 10000.0))
    out.append(qkv)
    k_cache = torch.zeros(2, 16, 2, head_dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    reference.store_kv_cache(k, v, k_cache, v_cache, torch.tensor([0, 1]))
    out += [k_cache, v_cache]
    tables, ctx = torch.tensor([[0], [0]], dtype=torch.int32), torch.tensor([2, 1], dtype=torch.int32)
    out.append(reference.paged_decode_attention(q, k_cache, v_cache, tables, ctx, 0.125))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_fallback_when_unavailable(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    monkeypatch.setattr(cpu_ops, "library", lambda: None)
    for got, want in zip(run_all_ops(dtype), run_all_reference(dtype), strict=True):
        assert_bits(got, want)


def test_fallback_when_calibration_failed(lib: cpu_ops._Library, monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch whose kernels the C++ does not replay (width 0): rms_norm and silu run the reference."""
    monkeypatch.setattr(lib, "rms_width", 0)
    monkeypatch.setattr(lib, "silu_width", 0)
    for got, want in zip(run_all_ops(torch.bfloat16), run_all_reference(torch.bfloat16), strict=True):
        assert_bits(got, want)


def test_fallback_for_unsupported_inputs(lib: cpu_ops._Library) -> None:
    """float16, a head_dim the attention does not handle (48): the reference's results."""
    for got, want in zip(run_all_ops(torch.float16), run_all_reference(torch.float16), strict=True):
        assert_bits(got, want)
    got, want = run_all_ops(torch.float32, head_dim=48), run_all_reference(torch.float32, head_dim=48)
    for a, b in zip(got, want, strict=True):
        assert_bits(a, b)
    # a context length of 0 and a block index past the cache: as the reference answers
    k_cache = torch.randn(2, 16, 2, 64)
    q = torch.randn(1, 4, 64)
    tables = torch.tensor([[1]], dtype=torch.int32)
    for ctx in (torch.tensor([0], dtype=torch.int32), torch.tensor([17], dtype=torch.int32)):
        try:
            want = reference.paged_decode_attention(q, k_cache, k_cache, tables, ctx, 0.125)
        except (IndexError, RuntimeError) as exc:
            with pytest.raises(type(exc)):
                cpu_ops.paged_decode_attention(q, k_cache, k_cache, tables, ctx, 0.125)
        else:
            assert_bits(cpu_ops.paged_decode_attention(q, k_cache, k_cache, tables, ctx, 0.125), want)


# ---- the builder -------------------------------------------------------------------------------------
def test_native_load_is_cached(lib: cpu_ops._Library) -> None:
    again = _native.load(cpu_ops.SOURCE, cpu_ops.LIB_NAME)
    assert again is lib.lib
    path = _native.library_path(cpu_ops.SOURCE, cpu_ops.LIB_NAME)
    assert path.is_file() and path.parent.name.startswith("cpu_ops-")
    assert _native.available(cpu_ops.SOURCE, cpu_ops.LIB_NAME)


def test_native_failure_remembered(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No compiler: load raises NativeUnavailable, and the second call does not probe again."""
    source = tmp_path / "nothing.cpp"
    source.write_text('extern "C" int f() { return 1; }\n')
    probes: list[str] = []

    def which(name: str) -> None:
        probes.append(name)
        return None

    monkeypatch.setattr(_native.shutil, "which", which)
    for _ in range(2):
        with pytest.raises(_native.NativeUnavailable, match="no C\\+\\+ compiler"):
            _native.load(source, "nothing")
    assert len(probes) == 1
    assert not _native.available(source, "nothing")
    assert len(probes) == 1
