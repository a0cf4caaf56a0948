"""Kernel costs and rooflines for Qwen2.5 decode, and achieved bandwidth on a CUDA GPU.

``python benches/bench_kernels.py`` prints bytes, FLOPs and the H100 roofline time of every
kernel call (the tables in ``tritonlm/kernels/NOTES.md``) and, when CUDA is present, times each
kernel with ``triton.testing.do_bench`` and reports achieved GB/s against the roofline. Under
pytest (``make bench``) the measurement is one test that skips cleanly without CUDA.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

H100_BW = 3.35e12  # bytes/s (H100 SXM HBM3)
H100_FLOPS = 990e12  # dense bf16 FLOP/s
BF16 = 2
FP32 = 4


@dataclass(frozen=True)
class Shapes:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int


MODELS = {
    "0.5B": Shapes("Qwen2.5-0.5B", 24, 896, 14, 2, 64, 4864, 151936),
    "7B": Shapes("Qwen2.5-7B", 28, 3584, 28, 4, 128, 18944, 152064),
}
BATCHES = (1, 64)
CONTEXTS = (1024, 32768)
BLOCK_SIZE = 16


@dataclass(frozen=True)
class Cost:
    bytes: float
    flops: float

    @property
    def roofline_s(self) -> float:
        return max(self.bytes / H100_BW, self.flops / H100_FLOPS)


def kernel_costs(m: Shapes, batch: int, ctx: int) -> dict[str, Cost]:
    """Bytes moved and FLOPs of one call of each kernel in a bf16 decode step (one token per sequence).

    ``prefill_attention`` is costed for a causal prefill of a ``ctx``-token prompt per sequence
    (``batch`` sequences), the case that kernel serves; K/V counted once (ideal reuse).
    """
    b, h, d = batch, m.hidden, m.head_dim
    q_elems, kv_elems = m.heads * d, m.kv_heads * d
    splits = math.ceil(ctx / 256)  # decode partition (decode_attention.CONFIGS)
    return {
        # x, weight in; out
        "rms_norm": Cost((2 * b * h + h) * BF16, 4 * b * h),
        # x, residual, weight in; x + residual, out
        "fused_add_rms_norm": Cost((4 * b * h + h) * BF16, 5 * b * h),
        # q, k read and written; fp32 cos|sin row and an int64 position per token
        "rotary_embedding": Cost(
            2 * b * (q_elems + kv_elems) * BF16 + b * (d * FP32 + 8), 3 * b * (q_elems + kv_elems)
        ),
        # k, v read and written; int64 slot per token
        "store_kv_cache": Cost(4 * b * kv_elems * BF16 + 8 * b, 0),
        # q in, out; K and V of ctx tokens; int32 block-table entries and length
        "paged_decode_attention": Cost(
            (2 * b * q_elems + 2 * b * ctx * kv_elems) * BF16 + b * (ctx // BLOCK_SIZE + 1) * 4,
            4 * b * m.heads * ctx * d + 5 * b * m.heads * ctx,
        ),
        # split-KV partials (o, m, l in fp32) written and read once more by the merge kernel
        "paged_decode_attention (split-KV extra)": Cost(2 * b * m.heads * splits * (d + 2) * FP32, 0),
        "prefill_attention": Cost(
            (2 * b * ctx * q_elems + 2 * b * ctx * kv_elems) * BF16 + b * (ctx // BLOCK_SIZE + 1) * 4,
            4 * b * m.heads * d * ctx * (ctx + 1) / 2,
        ),
        # gate|up in, out
        "silu_and_mul": Cost(3 * b * m.inter * BF16, 5 * b * m.inter),
        # int32 mask words in; worst case every fp32 logit written (-inf)
        "apply_token_bitmask": Cost(b * math.ceil(m.vocab / 32) * 4 + b * m.vocab * FP32, 0),
    }


def calls_per_step(m: Shapes) -> dict[str, int]:
    """How often each kernel runs in one forward (decode step) of the model."""
    return {
        "rms_norm": 1,
        "fused_add_rms_norm": 2 * m.layers,
        "rotary_embedding": m.layers,
        "store_kv_cache": m.layers,
        "paged_decode_attention": m.layers,
        "silu_and_mul": m.layers,
        "apply_token_bitmask": 1,
    }


def _fmt_bytes(x: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f} B"


def _fmt_num(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f}"


def _fmt_time(s: float) -> str:
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def markdown_tables() -> str:
    lines = []
    for m in MODELS.values():
        lines.append(f"### {m.name} (bf16, block size {BLOCK_SIZE})\n")
        lines.append("| kernel (one call) | batch | context | bytes | FLOPs | FLOP/byte | H100 roofline | bound |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---|")
        for kernel in kernel_costs(m, 1, 1024):
            for batch in BATCHES:
                for ctx in CONTEXTS:
                    c = kernel_costs(m, batch, ctx)[kernel]
                    ctx_dep = "attention" in kernel
                    if not ctx_dep and ctx != CONTEXTS[0]:
                        continue
                    intensity = c.flops / c.bytes if c.bytes else 0.0
                    bound = "compute" if c.flops / H100_FLOPS > c.bytes / H100_BW else "memory"
                    lines.append(
                        f"| {kernel} | {batch} | {ctx if ctx_dep else 'any'} | {_fmt_bytes(c.bytes)} | "
                        f"{_fmt_num(c.flops)} | {intensity:.2g} | {_fmt_time(c.roofline_s)} | {bound} |"
                    )
        lines.append("")
        lines.append(f"Per decode step of {m.name} (all layers, these kernels only, roofline sum):\n")
        lines.append("| batch | context | kernel bytes | kernel roofline | of which attention |")
        lines.append("|---:|---:|---:|---:|---:|")
        for batch in BATCHES:
            for ctx in CONTEXTS:
                costs = kernel_costs(m, batch, ctx)
                total_b = sum(costs[k].bytes * n for k, n in calls_per_step(m).items())
                total_t = sum(costs[k].roofline_s * n for k, n in calls_per_step(m).items())
                attn_t = costs["paged_decode_attention"].roofline_s * m.layers
                lines.append(
                    f"| {batch} | {ctx} | {_fmt_bytes(total_b)} | {_fmt_time(total_t)} | {_fmt_time(attn_t)} |"
                )
        lines.append("")
    return "\n".join(lines)


# ---- measurement on CUDA -------------------------------------------------------------------------
def _inputs(m: Shapes, batch: int, ctx: int, dev: str) -> dict[str, Callable[[], object]]:
    """Closures that launch one call of each Triton kernel on realistic decode inputs."""
    from tritonlm.kernels import get_ops
    from tritonlm.kernels.reference import rope_cos_sin_cache

    ops = get_ops("triton")
    dt = torch.bfloat16
    h, d = m.hidden, m.head_dim
    x = torch.randn(batch, h, dtype=dt, device=dev)
    res = torch.randn_like(x)
    w = torch.randn(h, dtype=dt, device=dev)
    q = torch.randn(batch, m.heads, d, dtype=dt, device=dev)
    k = torch.randn(batch, m.kv_heads, d, dtype=dt, device=dev)
    v = torch.randn_like(k)
    blocks_per_seq = math.ceil(ctx / BLOCK_SIZE)
    num_blocks = batch * blocks_per_seq
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, m.kv_heads, d, dtype=dt, device=dev)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(num_blocks, device=dev, dtype=torch.int32).view(batch, blocks_per_seq)
    lens = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
    slots = torch.arange(batch, device=dev, dtype=torch.int64) * blocks_per_seq * BLOCK_SIZE
    cs = rope_cos_sin_cache(d, 32768 + 1, 1e6, dev)
    pos = torch.full((batch,), ctx - 1, dtype=torch.int64, device=dev)
    gate_up = torch.randn(batch, 2 * m.inter, dtype=dt, device=dev)
    logits = torch.randn(batch, m.vocab, dtype=torch.float32, device=dev)
    mask = torch.zeros(batch, math.ceil(m.vocab / 32), dtype=torch.int32, device=dev)
    scale = d**-0.5
    return {
        "rms_norm": lambda: ops.rms_norm(x, w, 1e-6),
        "fused_add_rms_norm": lambda: ops.fused_add_rms_norm(x, res, w, 1e-6),
        "rotary_embedding": lambda: ops.rotary_embedding(q, k, pos, cs),
        "store_kv_cache": lambda: ops.store_kv_cache(k, v, k_cache, v_cache, slots),
        "paged_decode_attention": lambda: ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale),
        "silu_and_mul": lambda: ops.silu_and_mul(gate_up),
        "apply_token_bitmask": lambda: ops.apply_token_bitmask(logits, mask),
    }


def measure(dev: str = "cuda") -> list[tuple[str, str, int, int, float, float, float]]:
    """(model, kernel, batch, ctx, measured s, achieved GB/s, fraction of roofline) per case."""
    from triton.testing import do_bench

    rows = []
    for m in MODELS.values():
        for batch in BATCHES:
            for ctx in CONTEXTS:
                costs = kernel_costs(m, batch, ctx)
                for kernel, fn in _inputs(m, batch, ctx, dev).items():
                    if ctx != CONTEXTS[0] and "attention" not in kernel:
                        continue
                    secs = do_bench(fn, warmup=25, rep=100) * 1e-3
                    c = costs[kernel]
                    rows.append((m.name, kernel, batch, ctx, secs, c.bytes / secs / 1e9, c.roofline_s / secs))
                torch.cuda.empty_cache()
    return rows


def test_kernels_against_roofline() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: kernel bandwidth is measured on a GPU only")
    from tritonlm.config import env

    if env().triton_interpret:
        pytest.skip("TRITON_INTERPRET=1 is set: the GPU kernels cannot be timed")
    for row in measure():
        name, kernel, batch, ctx, secs, gbs, frac = row
        print(f"{name:14} {kernel:24} b={batch:3} ctx={ctx:6} {secs * 1e6:9.1f} us {gbs:8.1f} GB/s {frac:6.1%}")
        assert secs > 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables-only", action="store_true", help="print the cost tables and stop")
    args = parser.parse_args(argv)
    print(markdown_tables())
    if args.tables_only:
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: skipping the measurements")
        return 0
    print("| model | kernel | batch | context | time | GB/s | of roofline |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, kernel, batch, ctx, secs, gbs, frac in measure():
        print(f"| {name} | {kernel} | {batch} | {ctx} | {_fmt_time(secs)} | {gbs:.0f} | {frac:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
