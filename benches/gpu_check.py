"""The checks that need a CUDA GPU, in one short run (``make gpu-check``; under 5 minutes).

1. The kernel tests, compiled (``TRITON_INTERPRET=0``): every Triton kernel against its torch
   reference on the GPU, the quantized GEMM included, and the tiny model end to end.
2. The quantized GEMM's achieved bandwidth against the roofline: weight (+ scale/offset) bytes
   read per call / time, at M = 1 and 16, for Qwen2.5-0.5B and -7B matrices, int4 and int8.
3. Tokens/s of the default model (quantized weights, Triton kernels): one stream and 16
   concurrent requests.

Without a CUDA device it prints that it skipped and exits 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# HBM bandwidth by device name (bytes/s); the first match wins
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L4": 0.3e12}
SHAPES = {
    "0.5B gate_up": (9728, 896),
    "0.5B down": (896, 4864),
    "0.5B lm_head": (151936, 896),
    "7B gate_up": (37888, 3584),
    "7B down": (3584, 18944),
}


def kernel_tests(timeout: int = 150) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    files = [
        "tests/kernels/test_kernels.py",
        "tests/kernels/test_kernels_quant.py",
        "tests/kernels/test_kernels_model.py",
    ]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", *files], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    return {"returncode": proc.returncode, "seconds": round(time.perf_counter() - start, 1), "tail": tail}


def gemm_bandwidth() -> list[dict]:
    import torch
    import triton.testing

    from tritonlm.kernels.quant_matmul import quant_linear
    from tritonlm.kernels.qweight import quantize_rtn

    name = torch.cuda.get_device_name()
    peak = next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)
    rows = []
    for label, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.float32) * 0.02
        for bits in (4, 8):
            qw = quantize_rtn(w, bits, 32)
            for m in (1, 16):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                ms = triton.testing.do_bench(lambda x=x, qw=qw: quant_linear(x, qw), warmup=25, rep=100)
                gbs = qw.nbytes() / (ms * 1e-3) / 1e9
                rows.append({
                    "shape": label, "bits": bits, "M": m, "ms": round(ms, 4), "GB/s": round(gbs, 1),
                    "of_peak": None if peak is None else round(gbs * 1e9 / peak, 3),
                })  # fmt: skip
        del w
    return rows


def model_tokens_per_s() -> dict:
    import torch

    from tritonlm import LLM, SamplingParams

    llm = LLM("default", device="cuda", dtype="bfloat16", kv_cache_bytes=2 << 30, max_model_len=2048)
    params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    prompt = list(range(1000, 1098))
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))  # compile the kernels
    single = llm.generate([prompt], params)[0].usage.decode_tokens_per_s
    start = time.perf_counter()
    outs = llm.generate([[t + i for t in prompt] for i in range(16)], params)
    torch.cuda.synchronize()
    concurrent = sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - start)
    llm.close()
    return {"single_stream_tok_s": round(single, 1), "concurrent16_tok_s": round(concurrent, 1)}


def main() -> int:
    try:
        import torch
    except ImportError:
        print("gpu-check: torch is not installed; skipped")
        return 0
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; skipped (run it on a GPU machine)")
        return 0
    started = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(), "kernel_tests": kernel_tests()}
    print(json.dumps(report["kernel_tests"]), flush=True)
    report["quant_gemm"] = gemm_bandwidth()
    for row in report["quant_gemm"]:
        print(json.dumps(row), flush=True)
    report["model"] = model_tokens_per_s()
    print(json.dumps(report["model"]), flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"gpu-check: done in {report['seconds']} s on {report['device']}")
    return 0 if report["kernel_tests"]["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
