"""Compile every kernel variant a launcher can choose for NVIDIA targets, without a GPU.

``python -m tritonlm.kernels.compile_check [--arch 80 90] [--jobs N]`` builds PTX and a cubin
for each (kernel, constexpr config, dtype) in the modules' ``compile_specs()`` (read from the
same tables the launchers use) with ``triton.compile(ASTSource(...), target=GPUTarget(...))``.
Pointers and strides carry the divisibility-by-16 hints a real launch gets for Qwen2.5 shapes;
``--generic`` also compiles the variants without them. Exit status 1 on any compile error or
empty output. Must run with TRITON_INTERPRET unset (the interpreter and the compiler cannot
share a process).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from tritonlm.config import env

KERNEL_MODULES: tuple[str, ...] = (
    "rms_norm",
    "rotary",
    "kv_store",
    "decode_attention",
    "prefill_attention",
    "activation",
    "bitmask",
    "quant_matmul",
)


def compile_one(module: str, index: int, arch: int, aligned: bool = True) -> tuple[str, float, int, int, str]:
    """Compile spec ``index`` of ``module`` for ``sm_<arch>``: (label, seconds, ptx chars, cubin bytes, error).

    ``aligned``: with the divisibility hints a launch on 16-aligned pointers and strides gets
    (see ``KernelSpec.aligned_attrs``); without them, the generic variant.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    spec = importlib.import_module(f"tritonlm.kernels.{module}").compile_specs()[index]
    label = f"{spec.fn.__name__} sm_{arch} [{spec.label}{'' if aligned else ' generic'}]"
    t0 = time.perf_counter()
    try:
        attrs = spec.aligned_attrs() if aligned else None
        src = ASTSource(fn=spec.fn, signature=spec.full_signature(), constexprs=spec.constexprs, attrs=attrs)
        kernel = triton_compile(
            src,
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
        )
        ptx = kernel.asm.get("ptx", "")
        cubin = kernel.asm.get("cubin", b"")
    except Exception as exc:  # every failure is reported, none stops the run
        return label, time.perf_counter() - t0, 0, 0, f"{type(exc).__name__}: {exc}"
    err = "" if ptx and cubin else "empty PTX or cubin"
    return label, time.perf_counter() - t0, len(ptx), len(cubin), err


def all_jobs(
    archs: list[int], modules: tuple[str, ...] = KERNEL_MODULES, generic: bool = False
) -> list[tuple[str, int, int, bool]]:
    jobs = []
    variants = (True, False) if generic else (True,)
    for module in modules:
        n = len(importlib.import_module(f"tritonlm.kernels.{module}").compile_specs())
        jobs += [(module, i, arch, aligned) for i in range(n) for arch in archs for aligned in variants]
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities, e.g. 80 90")
    parser.add_argument("--jobs", type=int, default=2, help="parallel compiler processes")
    parser.add_argument("--module", nargs="*", default=list(KERNEL_MODULES), choices=KERNEL_MODULES)
    parser.add_argument(
        "--generic", action="store_true", help="also compile the variants without alignment hints (twice the time)"
    )
    args = parser.parse_args(argv)
    if env().triton_interpret:
        print("compile_check: unset TRITON_INTERPRET (the interpreter cannot compile for a GPU)", file=sys.stderr)
        return 2
    jobs = all_jobs(args.arch, tuple(args.module), args.generic)
    t0 = time.perf_counter()
    failures = 0
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(compile_one, *job) for job in jobs]
        for fut in futures:
            label, secs, ptx_len, cubin_len, err = fut.result()
            status = "FAIL" if err else "ok"
            print(
                f"{status:4} {secs:5.2f}s ptx={ptx_len:7d} cubin={cubin_len:7d} {label}"
                + (f"\n     {err}" if err else "")
            )
            failures += bool(err)
    print(f"compiled {len(jobs) - failures}/{len(jobs)} variants in {time.perf_counter() - t0:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
