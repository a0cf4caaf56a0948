"""Weight-only quantized linear kernels on this CPU: median ms, effective GB/s and GFLOP/s.

    python benches/bench_quant_linear.py [--threads 2] [--rows 1,4,16,64,512] [--suite all]
    pytest benches/bench_quant_linear.py -s --benchmark-enable      # the same matrices, plus gates

For each Qwen2.5-0.5B shape (gate_up [9728, 896], down [896, 4864]), row count M and weight format
(int4 G32 with offsets, int8 G32) it times:

* ``cpu_quant``: tritonlm's C++ kernel (int8 activations per block, VNNI integer dots);
* ``torch_int4pack``: ``aten._weight_int4pack_mm_for_cpu`` on bf16 x (int4 only; the offsets
  become its zero points, ``zero = offset + 8 * scale``);
* ``torch_int8pack``: ``aten._weight_int8pack_mm`` on bf16 x, **per-channel** scales (it has no
  groups: a cheaper format than int8 G32, timed for its speed only);
* ``fbgemm_dynamic``: ``quantized.linear_dynamic`` (fbgemm, per-channel int8, fp32 x);
* ``dequant_bf16`` (M >= 64): dequantize the matrix to bf16 on every call, then bf16 ``F.linear``
  (a candidate prefill path);
* the dense baselines, under format ``dense``: bf16 ``F.linear`` and oneDNN's packed fp32 linear
  (``mkldnn._reorder_linear_weight`` + ``mkldnn._linear_pointwise``).

The ``compact`` suite (``--suite compact``) times only ``cpu_quant``, on GGUF-like weights of the
default model's types (``q5_0``: values -16..15 with float16 scales, groups of 32; ``q8_0``: int8
with float16 scales; ``q6_k``: values -32..31, groups of 16, scales that are float16 x int8
products, not float16-exact; ``q4_0``: 4-bit values with float16 scales and offsets) on gate_up,
down and lm_head [151936, 896]: each weight packed in the layouts that hold it (e.g. ``q5+f16``:
5-bit values, float16 scales; ``q8+f32``: int8 values, float32 scales, the plain layout), which
all give the same bits; the kernel column names the layout and its bits per weight (``*``: the
one ``cpu_quant.pack`` chooses), and each cell but the plain layout's ends with its time over the
plain layout's. The cells are timed one call each in turn, so that memory bandwidth that drifts
(other machines on the host) hits every layout alike.

Weights are cold, as in a decode step that streams the whole model: every kernel cycles through
enough copies of its weights (> 96 MiB, three times this CPU's L3) that no call finds them in
cache. Effective GB/s = bytes of the kernel's own weight representation (scales, offsets and
padding included) / time. The kernels alternate within each round (round-robin over all cells of
one shape and row count), so load from other processes hits them alike; the median is over all
calls of all rounds. ``uptime``'s load average is printed before and after.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tritonlm.kernels import cpu_quant
from tritonlm.kernels.qweight import QuantizedWeight, pack_int4, quantize_rtn

SHAPES: dict[str, tuple[int, int]] = {"gate_up": (9728, 896), "down": (896, 4864)}
ROWS: tuple[int, ...] = (1, 4, 16, 64, 512)
FORMATS: dict[str, tuple[int, int]] = {"int4-g32-off": (4, 32), "int8-g32": (8, 32)}
COMPACT_SHAPES: dict[str, tuple[int, int]] = {**SHAPES, "lm_head": (151936, 896)}
COMPACT_FORMATS: tuple[str, ...] = ("q5_0", "q8_0", "q6_k", "q4_0")
COLD_BYTES = 96 << 20
DEQUANT_MIN_ROWS = 64


@dataclass
class Cell:
    """One (kernel, format) of a shape: its weight copies and a call on one of them."""

    kernel: str
    fmt: str
    weight_bytes: int
    copies: list[Any]
    call: Callable[[torch.Tensor, Any], torch.Tensor]
    x_dtype: torch.dtype = torch.bfloat16
    times: list[float] = field(default_factory=list)
    next_copy: int = 0

    def run(self, x: torch.Tensor) -> None:
        copy = self.copies[self.next_copy]
        self.next_copy = (self.next_copy + 1) % len(self.copies)
        self.call(x, copy)


def _copy_count(nbytes: int) -> int:
    return max(1, -(-COLD_BYTES // max(nbytes, 1)))


def _copies(make: Callable[[], Any], nbytes: int) -> list[Any]:
    return [make() for _ in range(_copy_count(nbytes))]


def _int4pack(qw: QuantizedWeight) -> tuple[torch.Tensor, torch.Tensor]:
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(qw.int_values().to(torch.int32), 2)
    offsets = qw.offsets if qw.offsets is not None else torch.zeros_like(qw.scales)
    # torch's int4 dequantization is (q - 8) * scale + zero
    sz = torch.stack([qw.scales.T, (offsets + 8 * qw.scales).T], dim=-1).contiguous().to(torch.bfloat16)
    return packed, sz


def _per_channel_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (w.abs().amax(1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def make_cells(n: int, k: int, rows: int, seed: int = 0) -> list[Cell]:
    """Every (kernel, format) cell for one shape; dequant_bf16 only when ``rows`` >= 64."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    cells: list[Cell] = []
    for fmt, (bits, group) in FORMATS.items():
        qw = quantize_rtn(w, bits, group)
        if cpu_quant.available():
            first = cpu_quant.pack(qw)
            cells.append(
                Cell("cpu_quant", fmt, first.nbytes(), _packed_copies(first), lambda x, p: cpu_quant.linear(x, p))
            )
        if bits == 4:
            packed, sz = _int4pack(qw)
            nbytes = packed.numel() + sz.numel() * 2
            g = group
            cells.append(
                Cell(
                    "torch_int4pack",
                    fmt,
                    nbytes,
                    _copies(lambda packed=packed, sz=sz: (packed.clone(), sz.clone()), nbytes),
                    lambda x, c, g=g: torch.ops.aten._weight_int4pack_mm_for_cpu(x, c[0], g, c[1]),
                )
            )
        else:
            q8, s8 = _per_channel_int8(w)
            nbytes = q8.numel() + n * 2
            cells.append(
                Cell(
                    "torch_int8pack",
                    fmt,
                    nbytes,
                    _copies(lambda q8=q8, s8=s8: (q8.clone(), s8.to(torch.bfloat16)), nbytes),
                    lambda x, c: torch.ops.aten._weight_int8pack_mm(x, c[0], c[1]),
                )
            )
            with warnings.catch_warnings():  # quantized tensors are deprecated (the op is timed while it exists)
                warnings.simplefilter("ignore")
                qt = torch.quantize_per_channel(w, s8.double(), torch.zeros(n, dtype=torch.long), 0, torch.qint8)
            cells.append(
                Cell(
                    "fbgemm_dynamic",
                    fmt,
                    q8.numel() + n * 8,  # int8 weights + per-channel scale and column offset (about)
                    _copies(lambda qt=qt: torch.ops.quantized.linear_prepack(qt.clone(), None), q8.numel()),
                    lambda x, c: torch.ops.quantized.linear_dynamic(x, c, False),
                    x_dtype=torch.float32,
                )
            )
        if rows >= DEQUANT_MIN_ROWS:
            nbytes = qw.nbytes()
            cells.append(
                Cell(
                    "dequant_bf16",
                    fmt,
                    nbytes,
                    _copies(lambda qw=qw: _clone_qweight(qw), nbytes),
                    lambda x, c: F.linear(x, c.dequantize(torch.bfloat16)),
                )
            )
    wb = w.to(torch.bfloat16)
    cells.append(Cell("bf16_linear", "dense", wb.numel() * 2, _copies(wb.clone, wb.numel() * 2), F.linear))
    nbytes = w.numel() * 4
    cells.append(
        Cell(
            "onednn_fp32",
            "dense",
            nbytes,
            _copies(lambda: torch.ops.mkldnn._reorder_linear_weight(w.clone(), None), nbytes),
            lambda x, c: torch.ops.mkldnn._linear_pointwise(x, c, None, "none", [], ""),
            x_dtype=torch.float32,
        )
    )
    return cells


def gguf_like(w: torch.Tensor, fmt: str) -> QuantizedWeight:
    """``w`` quantized as GGUF's ``fmt`` would hold it (see tritonlm.model.gguf_quant): q5_0 / q8_0
    with float16 group scales, q6_k with scales = float16 d (per 256) x int8 sub-scale (per 16),
    q4_0 as 4-bit values 0..15 with float16 d and offsets -8 d."""
    n, k = w.shape
    if fmt == "q4_0":
        g = w.reshape(n, k // 32, 32)
        d = (g.abs().amax(-1) / 8.0).half().float()
        d = torch.where(d > 0, d, torch.ones_like(d))
        q = (torch.round(g / d.unsqueeze(-1)) + 8).clamp(0, 15).reshape(n, k)
        return QuantizedWeight(pack_int4(q), d.contiguous(), (-8 * d).contiguous(), 4, 32)
    if fmt in ("q5_0", "q8_0"):
        qmax = 16.0 if fmt == "q5_0" else 127.0
        lo, hi = (-16, 15) if fmt == "q5_0" else (-127, 127)
        g = w.reshape(n, k // 32, 32)
        d = (g.abs().amax(-1) / qmax).half().float()
        d = torch.where(d > 0, d, torch.ones_like(d))
        q = torch.round(g / d.unsqueeze(-1)).clamp(lo, hi).to(torch.int8).reshape(n, k)
        return QuantizedWeight(q.contiguous(), d.contiguous(), None, 8, 32)
    if fmt == "q6_k":
        g = w.reshape(n, k // 16, 16)
        sub = g.abs().amax(-1) / 32.0
        d = (sub.reshape(n, -1, 16).amax(-1) / 127.0).half().float()  # per 256 inputs
        d = torch.where(d > 0, d, torch.ones_like(d)).repeat_interleave(16, dim=1)
        scale = d * torch.round(sub / d).clamp(1, 127)
        q = torch.round(g / scale.unsqueeze(-1)).clamp(-32, 31).to(torch.int8).reshape(n, k)
        return QuantizedWeight(q.contiguous(), scale.contiguous(), None, 8, 16)
    raise ValueError(f"unknown GGUF-like format {fmt!r}")


def _packed_copies(first: cpu_quant.CpuQuantWeight) -> list[cpu_quant.CpuQuantWeight]:
    return [first] + [
        cpu_quant.CpuQuantWeight(
            first.data.clone(), first.shape, first.bits, first.group_size, first.has_offsets, first.library,
            first.value_bits, first.half_scales,
        )
        for _ in range(_copy_count(first.nbytes()) - 1)
    ]  # fmt: skip


def _layouts(qw: QuantizedWeight) -> list[dict[str, Any]]:
    """pack() keyword sets for the layouts that hold ``qw``: pack()'s choice first, then the
    narrowest values with float16 and with float32 scales, the plain layout last."""
    layouts: list[dict[str, Any]] = [{}]
    narrowest = qw.bits
    if qw.bits == 8 and qw.offsets is None:
        lo, hi = (int(v) for v in torch.aminmax(qw.qweight))
        narrowest = next(vb for vb in (5, 6, 8) if -(1 << (vb - 1)) <= lo and hi < 1 << (vb - 1))
    exact = bool((qw.scales.half().float() == qw.scales).all()) and (
        qw.offsets is None or bool((qw.offsets.half().float() == qw.offsets).all())
    )
    for half in (True, False) if exact and qw.group_size >= 32 else (False,):
        layouts.append({"value_bits": narrowest, "half_scales": half})
    layouts.append({"value_bits": qw.bits, "half_scales": False})
    return layouts


def make_compact_cells(n: int, k: int, formats: tuple[str, ...] = COMPACT_FORMATS, seed: int = 0) -> list[Cell]:
    """``cpu_quant`` cells for GGUF-like weights: the layouts that hold each weight (pack()'s
    choice marked ``*``), the plain one last."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    cells: list[Cell] = []
    for fmt in formats:
        if fmt == "q6_k" and k % 256:
            continue  # k-quants need super-blocks of 256 inputs (the model's down projection only)
        qw = gguf_like(w, fmt)
        seen: dict[str, Cell] = {}
        for i, layout in enumerate(_layouts(qw)):
            first = cpu_quant.pack(qw, **layout)
            if first.layout in seen:
                continue
            bpw = first.nbytes() * 8 / (n * k)
            kernel = f"cpu_quant {first.layout}{'*' if i == 0 else ''} ({bpw:.2f} b/w)"
            seen[first.layout] = Cell(kernel, fmt, first.nbytes(), _packed_copies(first), _call_linear)
        plain = seen.pop(f"q{qw.bits}+f32")
        cells.extend([*seen.values(), plain])
        del qw
    return cells


def _call_linear(x: torch.Tensor, packed: cpu_quant.CpuQuantWeight) -> torch.Tensor:
    return cpu_quant.linear(x, packed)


def _clone_qweight(qw: QuantizedWeight) -> QuantizedWeight:
    offsets = None if qw.offsets is None else qw.offsets.clone()
    return QuantizedWeight(qw.qweight.clone(), qw.scales.clone(), offsets, qw.bits, qw.group_size)


def measure_cells(
    cells: list[Cell], rows: int, k: int, budget_s: float, rounds: int = 5, interleave: bool = False
) -> None:
    """Round-robin timing: each round times a batch of calls of every cell in turn
    (``interleave``: one call of every cell in turn, so that drifting memory bandwidth, as other
    machines' load on the host changes it, hits every cell alike)."""
    xs = {dt: torch.randn(rows, k).to(dt) for dt in {c.x_dtype for c in cells}}
    reps: dict[int, int] = {}
    for i, cell in enumerate(cells):  # warm up (and size the batches)
        x = xs[cell.x_dtype]
        cell.run(x)
        start = time.perf_counter()
        cell.run(x)
        one = time.perf_counter() - start
        reps[i] = max(2, min(200, int(budget_s / rounds / max(one, 1e-6))))
    if interleave:
        calls = max(3, min(reps.values()))
        for _ in range(rounds * calls):
            for cell in cells:
                start = time.perf_counter()
                cell.run(xs[cell.x_dtype])
                cell.times.append(time.perf_counter() - start)
        return
    for _ in range(rounds):
        for i, cell in enumerate(cells):
            x = xs[cell.x_dtype]
            for _ in range(reps[i]):
                start = time.perf_counter()
                cell.run(x)
                cell.times.append(time.perf_counter() - start)


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average n/a"


def _result(name: str, n: int, k: int, m: int, c: Cell) -> dict[str, Any]:
    med = statistics.median(c.times)
    return {
        "shape": name,
        "n": n,
        "k": k,
        "rows": m,
        "kernel": c.kernel,
        "format": c.fmt,
        "median_ms": med * 1e3,
        "min_ms": min(c.times) * 1e3,
        "gb_s": c.weight_bytes / med / 1e9,
        "gflop_s": 2.0 * m * n * k / med / 1e9,
        "calls": len(c.times),
    }


def run_matrix(
    threads: int = 2, rows: tuple[int, ...] = ROWS, shapes: dict[str, tuple[int, int]] = SHAPES, budget_s: float = 0.3
) -> list[dict[str, Any]]:
    """The measurements: one dict per (shape, rows, kernel, format)."""
    torch.set_num_threads(threads)
    results: list[dict[str, Any]] = []
    for name, (n, k) in shapes.items():
        for m in rows:
            cells = make_cells(n, k, m)
            measure_cells(cells, m, k, budget_s)
            results.extend(_result(name, n, k, m, c) for c in cells)
            del cells
            gc.collect()
    return results


def run_compact(
    threads: int = 2,
    rows: tuple[int, ...] = ROWS,
    shapes: dict[str, tuple[int, int]] = COMPACT_SHAPES,
    budget_s: float = 0.3,
    formats: tuple[str, ...] = COMPACT_FORMATS,
) -> list[dict[str, Any]]:
    """The compact suite: ``cpu_quant`` in the layouts that hold each GGUF-like format's weight;
    ``vs_plain`` (``vs_plain_min``): the median (fastest) call's time over the plain layout's."""
    torch.set_num_threads(threads)
    results: list[dict[str, Any]] = []
    for name, (n, k) in shapes.items():
        cells = make_compact_cells(n, k, formats)
        for m in rows:
            for c in cells:
                c.times.clear()
            measure_cells(cells, m, k, budget_s, interleave=True)
            got = [_result(name, n, k, m, c) for c in cells]
            plain = {r["format"]: r for r in got}  # each format's last cell: the plain layout
            for r in got:
                if r is not plain[r["format"]]:
                    r["vs_plain"] = r["median_ms"] / plain[r["format"]]["median_ms"]
                    r["vs_plain_min"] = r["min_ms"] / plain[r["format"]]["min_ms"]
            results.extend(got)
        del cells
        gc.collect()
    return results


def format_tables(results: list[dict[str, Any]], rows: tuple[int, ...], stat: str = "median") -> str:
    """One markdown table per shape: a line per (format, kernel), a column per row count;
    each cell ``ms / GB/s / GFLOP/s`` of the median call (``stat="min"``: of the fastest, which
    other processes' load disturbs less), and in the compact suite ``(time / plain layout's)``."""
    lines: list[str] = []
    for shape in dict.fromkeys(r["shape"] for r in results):
        sel = [r for r in results if r["shape"] == shape]
        n, k = sel[0]["n"], sel[0]["k"]
        lines.append(f"\n{shape} [{n}, {k}] (cell: {stat} ms / effective GB/s / GFLOP/s)\n")
        lines.append("| format | kernel | " + " | ".join(f"M={m}" for m in rows) + " |")
        lines.append("|---|---|" + "---:|" * len(rows))
        keys = list(dict.fromkeys((r["format"], r["kernel"]) for r in sel))
        for fmt, kernel in keys:
            cells = []
            for m in rows:
                hit = [r for r in sel if r["format"] == fmt and r["kernel"] == kernel and r["rows"] == m]
                if not hit:
                    cells.append("-")
                    continue
                r = hit[0]
                ms = r["median_ms"] if stat == "median" else r["min_ms"]
                gb_s, gflop_s = r["gb_s"] * r["median_ms"] / ms, r["gflop_s"] * r["median_ms"] / ms
                ratio = r.get("vs_plain" if stat == "median" else "vs_plain_min")
                shown = "" if ratio is None else f" ({ratio:.2f}x)"
                cells.append(f"{ms:.3f} / {gb_s:.1f} / {gflop_s:.0f}{shown}")
            lines.append(f"| {fmt} | {kernel} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _lookup(results: list[dict[str, Any]], shape: str, fmt: str, kernel: str, rows: int) -> float:
    for r in results:
        if (r["shape"], r["format"], r["kernel"], r["rows"]) == (shape, fmt, kernel, rows):
            return r["median_ms"]
    raise KeyError((shape, fmt, kernel, rows))


def test_quant_linear_matrix(benchmark) -> None:
    """Gates (ratios within one run, 2 threads): at M=1 the C++ int8 kernel beats bf16 F.linear
    by >= 1.3x on gate_up (it reads 10 MB against 17 MB), and M=16 costs < 8x M=1 (weight reuse)."""
    if benchmark.disabled:
        pytest.skip("benchmarks are disabled (run with --benchmark-enable, as make bench does)")
    if not cpu_quant.available():
        pytest.skip("the C++ kernel is unavailable (no compiler or the build failed)")
    holder: dict[str, Any] = {}

    def run() -> None:
        holder["before"] = load_average()
        holder["results"] = run_matrix()
        holder["after"] = load_average()

    benchmark.pedantic(run, rounds=1, iterations=1)
    results = holder["results"]
    print(f"\n{holder['before']} (before), {holder['after']} (after), isa {cpu_quant.load().isa}")
    print(format_tables(results, ROWS))
    ours_1 = _lookup(results, "gate_up", "int8-g32", "cpu_quant", 1)
    ours_16 = _lookup(results, "gate_up", "int8-g32", "cpu_quant", 16)
    bf16_1 = _lookup(results, "gate_up", "dense", "bf16_linear", 1)
    benchmark.extra_info.update(
        results=results, speedup_vs_bf16_m1=bf16_1 / ours_1, m16_over_m1=ours_16 / ours_1, load=holder["after"]
    )
    assert bf16_1 / ours_1 >= 1.3
    assert ours_16 / ours_1 < 8.0


def test_compact_layouts(benchmark) -> None:
    """Gate (2 threads, gate_up): q5_0 weights packed as 5-bit values + float16 scales (5.5 bits a
    weight against 9) decode one row >= 1.25x faster than in the plain int8 layout."""
    if benchmark.disabled:
        pytest.skip("benchmarks are disabled (run with --benchmark-enable, as make bench does)")
    if not cpu_quant.available():
        pytest.skip("the C++ kernel is unavailable (no compiler or the build failed)")
    holder: dict[str, Any] = {}

    def run() -> None:
        holder["before"] = load_average()
        holder["results"] = run_compact(rows=(1, 16), shapes={"gate_up": SHAPES["gate_up"]}, formats=("q5_0",))
        holder["after"] = load_average()

    benchmark.pedantic(run, rounds=1, iterations=1)
    results = holder["results"]
    print(f"\n{holder['before']} (before), {holder['after']} (after), isa {cpu_quant.load().isa}")
    print(format_tables(results, (1, 16)))
    by_kernel = {r["kernel"].split()[1].rstrip("*"): r["median_ms"] for r in results if r["rows"] == 1}
    speedup = by_kernel["q8+f32"] / by_kernel["q5+f16"]
    benchmark.extra_info.update(results=results, q5_speedup_m1=speedup, load=holder["after"])
    assert speedup >= 1.25


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="comma-separated row counts")
    parser.add_argument(
        "--shapes", default=None, help=f"comma-separated, of {', '.join(COMPACT_SHAPES)} (lm_head: compact suite only)"
    )
    parser.add_argument("--budget-s", type=float, default=0.3, help="seconds of calls per cell")
    parser.add_argument("--suite", choices=("baselines", "compact", "all"), default="all")
    parser.add_argument("--formats", default=",".join(COMPACT_FORMATS), help="compact suite: comma-separated")
    parser.add_argument("--stat", choices=("median", "min"), default="median", help="the call each cell shows")
    args = parser.parse_args(argv)
    rows = tuple(int(v) for v in args.rows.split(","))
    names = args.shapes.split(",") if args.shapes else list(COMPACT_SHAPES)
    if not cpu_quant.available():
        print("the C++ kernel is unavailable: its rows are left out")
    else:
        print(f"cpu_quant isa: {cpu_quant.load().isa}")
    print(f"threads {args.threads}; {load_average()} (before)")
    if args.suite in ("baselines", "all"):
        shapes = {s: SHAPES[s] for s in names if s in SHAPES}
        print(format_tables(run_matrix(args.threads, rows, shapes, args.budget_s), rows, args.stat))
        print(f"\n{load_average()} (after the baselines)")
    if args.suite in ("compact", "all") and cpu_quant.available():
        shapes = {s: COMPACT_SHAPES[s] for s in names}
        formats = tuple(args.formats.split(","))
        print(format_tables(run_compact(args.threads, rows, shapes, args.budget_s, formats), rows, args.stat))
        print(f"\n{load_average()} (after the compact suite)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
