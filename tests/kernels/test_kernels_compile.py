"""Every kernel variant a launcher can choose compiles to PTX and a cubin for sm_80 and sm_90.

Runs ``python -m tritonlm.kernels.compile_check`` in a subprocess: the test process has
TRITON_INTERPRET=1 set (tests/conftest.py), and the interpreter and the GPU compiler cannot
share a process. No GPU or driver is needed; ptxas ships with the triton wheel.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tritonlm.kernels import OP_MODULES
from tritonlm.kernels.compile_check import KERNEL_MODULES

ROOT = Path(__file__).resolve().parents[2]


def test_compile_check_covers_every_op_module() -> None:
    assert set(OP_MODULES.values()) <= set(KERNEL_MODULES)


def test_every_kernel_compiles_for_sm80_and_sm90(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(
        TRITON_ALWAYS_COMPILE="1",
        TRITON_CACHE_DIR=str(tmp_path / "triton-cache"),
        TRITON_DEFAULT_FP_FUSION="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tritonlm.kernels.compile_check", "--arch", "80", "90", "--jobs", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    failures = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert proc.returncode == 0 and not failures, out[-6000:]
    m = re.search(r"compiled (\d+)/(\d+) variants", out)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) > 0, out[-3000:]
    # every kernel of every op module was compiled for both targets
    for name in (
        "_rms_norm_kernel",
        "_rotary_kernel",
        "_kv_store_kernel",
        "_paged_decode_kernel",
        "_paged_decode_reduce_kernel",
        "_prefill_attention_kernel",
        "_silu_and_mul_kernel",
        "_apply_token_bitmask_kernel",
        "_quant_matmul_kernel",
    ):
        for arch in (80, 90):
            assert re.search(rf"^ok .* {name} sm_{arch} ", out, re.M), f"{name} sm_{arch} not compiled"
