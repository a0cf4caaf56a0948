"""The native small ops (tritonlm.kernels.cpu_ops) against the torch reference: µs per call.

    python benches/bench_cpu_ops.py [--threads 2] [--dtype bfloat16] [--batches 1,16] [--contexts 100,1000]
    pytest benches/bench_cpu_ops.py -s --benchmark-enable      # the same table, plus a gate

Decode shapes of Qwen2.5-0.5B: hidden 896, 14 query heads and 2 kv heads of 64, intermediate
4864, KV blocks of 16; a batch of B sequences decoding one token each at context C. Per op and
(B, C), native and reference calls alternate within each round (so load from other processes
hits both alike); the cell is the median over all calls. q / k / v are views of a fused qkv row,
as in the model. The last lines estimate one decode step's share of these ops: 24 layers x
(2 fused_add_rms_norm, rotary, store, attention, silu_and_mul). ``uptime``'s load average is
printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from tritonlm.kernels import cpu_ops, reference

HIDDEN, HQ, HK, HEAD_DIM, INTER, BLOCK = 896, 14, 2, 64, 4864, 16
LAYERS = 24
# calls per layer of a decode step
STEP_OPS = {
    "fused_add_rms_norm": 2,
    "rotary_embedding": 1,
    "store_kv_cache": 1,
    "paged_decode_attention": 1,
    "silu_and_mul": 1,
}


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average n/a"


def make_calls(batch: int, context: int, dtype: torch.dtype, seed: int = 0) -> dict[str, tuple[Callable, Callable]]:
    """op name -> (native call, reference call) on the same inputs (the in-place ops rewrite them)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, HIDDEN, generator=g).to(dtype)
    res = torch.randn(batch, HIDDEN, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(HIDDEN, generator=g)).to(dtype)
    qkv = torch.randn(batch, (HQ + 2 * HK) * HEAD_DIM, generator=g).to(dtype)
    q, k, v = qkv.split([HQ * HEAD_DIM, HK * HEAD_DIM, HK * HEAD_DIM], dim=-1)
    q, k, v = q.reshape(batch, HQ, HEAD_DIM), k.reshape(batch, HK, HEAD_DIM), v.reshape(batch, HK, HEAD_DIM)
    cos_sin = reference.rope_cos_sin_cache(HEAD_DIM, 32768, 1_000_000.0)
    positions = torch.full((batch,), context - 1, dtype=torch.int64)
    blocks_per = -(-context // BLOCK)
    num_blocks = batch * blocks_per + 1
    k_cache = torch.randn(num_blocks, BLOCK, HK, HEAD_DIM, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, BLOCK, HK, HEAD_DIM, generator=g).to(dtype)
    tables = torch.randperm(num_blocks - 1, generator=g)[: batch * blocks_per].reshape(batch, blocks_per)
    tables = tables.to(torch.int32)
    ctx = torch.full((batch,), context, dtype=torch.int32)
    slots = (tables[:, (context - 1) // BLOCK].long() * BLOCK + (context - 1) % BLOCK).contiguous()
    gate_up = torch.randn(batch, 2 * INTER, generator=g).to(dtype)
    scale = HEAD_DIM**-0.5
    return {
        "rms_norm": (lambda: cpu_ops.rms_norm(x, w, 1e-6), lambda: reference.rms_norm(x, w, 1e-6)),
        "fused_add_rms_norm": (
            lambda: cpu_ops.fused_add_rms_norm(x, res, w, 1e-6),
            lambda: reference.fused_add_rms_norm(x, res, w, 1e-6),
        ),
        "rotary_embedding": (
            lambda: cpu_ops.rotary_embedding(q, k, positions, cos_sin),
            lambda: reference.rotary_embedding(q, k, positions, cos_sin),
        ),
        "store_kv_cache": (
            lambda: cpu_ops.store_kv_cache(k, v, k_cache, v_cache, slots),
            lambda: reference.store_kv_cache(k, v, k_cache, v_cache, slots),
        ),
        "paged_decode_attention": (
            lambda: cpu_ops.paged_decode_attention(q, k_cache, v_cache, tables, ctx, scale),
            lambda: reference.paged_decode_attention(q, k_cache, v_cache, tables, ctx, scale),
        ),
        "silu_and_mul": (lambda: cpu_ops.silu_and_mul(gate_up), lambda: reference.silu_and_mul(gate_up)),
    }


def measure(calls: dict[str, tuple[Callable, Callable]], budget_s: float, rounds: int = 5) -> dict[str, list[float]]:
    """Median µs per call of each (op, native / reference): round-robin, batches sized to the budget."""
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in calls}
    reps: dict[str, int] = {}
    for name, pair in calls.items():  # warm up, size the batches
        for fn in pair:
            fn()
        start = time.perf_counter()
        pair[1]()
        one = time.perf_counter() - start
        reps[name] = max(5, min(2000, int(budget_s / rounds / 2 / max(one, 1e-6))))
    for _ in range(rounds):
        for name, pair in calls.items():
            for fn, out in zip(pair, times[name], strict=True):
                for _ in range(reps[name]):
                    start = time.perf_counter()
                    fn()
                    out.append(time.perf_counter() - start)
    return {name: [statistics.median(t) * 1e6 for t in pair] for name, pair in times.items()}


def run_matrix(
    threads: int, dtype: torch.dtype, batches: tuple[int, ...], contexts: tuple[int, ...], budget_s: float
) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    results = []
    for batch in batches:
        for context in contexts:
            medians = measure(make_calls(batch, context, dtype), budget_s)
            for op, (native_us, reference_us) in medians.items():
                results.append(
                    {"batch": batch, "context": context, "op": op, "native_us": native_us, "reference_us": reference_us}
                )
    return results


def step_estimate(results: list[dict[str, Any]], batch: int, context: int) -> tuple[float, float]:
    """ms per decode step in these ops (native, reference)."""
    native = ref = 0.0
    for r in results:
        if (r["batch"], r["context"]) == (batch, context) and r["op"] in STEP_OPS:
            native += LAYERS * STEP_OPS[r["op"]] * r["native_us"]
            ref += LAYERS * STEP_OPS[r["op"]] * r["reference_us"]
    return native / 1e3, ref / 1e3


def format_table(results: list[dict[str, Any]]) -> str:
    configs = list(dict.fromkeys((r["batch"], r["context"]) for r in results))
    lines = ["| op | " + " | ".join(f"B={b} C={c}" for b, c in configs) + " |", "|---|" + "---:|" * len(configs)]
    for op in dict.fromkeys(r["op"] for r in results):
        cells = []
        for b, c in configs:
            r = next(r for r in results if (r["batch"], r["context"], r["op"]) == (b, c, op))
            cells.append(f"{r['native_us']:.1f} / {r['reference_us']:.1f}")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    cells = []
    for b, c in configs:
        native, ref = step_estimate(results, b, c)
        cells.append(f"{native:.2f} / {ref:.2f} ms")
    lines.append("| decode step (24 layers) | " + " | ".join(cells) + " |")
    return "cell: native µs / reference µs per call\n\n" + "\n".join(lines)


def test_cpu_ops_matrix(benchmark) -> None:
    """Gate: at batch 1, context 100, the native ops' share of a decode step is under half the reference's."""
    if benchmark.disabled:
        pytest.skip("benchmarks are disabled (run with --benchmark-enable, as make bench does)")
    if not cpu_ops.available():
        pytest.skip("the C++ ops are unavailable (no compiler or the build failed)")
    holder: dict[str, Any] = {}

    def run() -> None:
        holder["before"] = load_average()
        holder["results"] = run_matrix(2, torch.bfloat16, (1, 16), (100, 1000), 0.3)
        holder["after"] = load_average()

    benchmark.pedantic(run, rounds=1, iterations=1)
    results = holder["results"]
    print(f"\n{holder['before']} (before), {holder['after']} (after)")
    print(format_table(results))
    native, ref = step_estimate(results, 1, 100)
    benchmark.extra_info.update(results=results, step_ms_native=native, step_ms_reference=ref, load=holder["after"])
    assert native < 0.5 * ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--contexts", default="100,1000", help="comma-separated context lengths")
    parser.add_argument("--budget-s", type=float, default=0.3, help="seconds of calls per op and config")
    args = parser.parse_args(argv)
    if not cpu_ops.available():
        print("the C++ ops are unavailable (no compiler or the build failed): both columns run the reference")
    lib = cpu_ops.library()
    widths = f"rms_width {lib.rms_width}, silu_width {lib.silu_width}" if lib else "n/a"
    print(f"threads {args.threads}; dtype {args.dtype}; torch {torch.__version__} ({widths})")
    print(f"{load_average()} (before)")
    results = run_matrix(
        args.threads,
        getattr(torch, args.dtype),
        tuple(int(v) for v in args.batches.split(",")),
        tuple(int(v) for v in args.contexts.split(",")),
        args.budget_s,
    )
    print(format_table(results))
    print(f"\n{load_average()} (after)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
