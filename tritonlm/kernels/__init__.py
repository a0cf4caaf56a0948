"""The op interface: every op the model calls, behind one explicit backend switch.

``get_ops("torch")`` returns the torch versions in :mod:`tritonlm.kernels.reference` (the CPU
runtime path), except the quantized matmul (:mod:`tritonlm.kernels.cpu_quant`) and the small
per-layer ops (:mod:`tritonlm.kernels.cpu_ops`), which run C++ kernels where they build;
``get_ops("triton")`` the hand-written Triton kernels (CUDA); ``get_ops("interpret")`` the same
kernels run by Triton's CPU interpreter (tests; TRITON_INTERPRET=1 must be set before triton is
imported). Triton is imported only when a Triton backend is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from tritonlm.config import BACKENDS
from tritonlm.errors import ConfigError

# op name -> module under tritonlm.kernels that holds its Triton launcher of the same name
OP_MODULES: dict[str, str] = {
    "rms_norm": "rms_norm",
    "fused_add_rms_norm": "rms_norm",
    "rotary_embedding": "rotary",
    "store_kv_cache": "kv_store",
    "paged_decode_attention": "decode_attention",
    "prefill_attention": "prefill_attention",
    "silu_and_mul": "activation",
    "apply_token_bitmask": "bitmask",
    "quant_linear": "quant_matmul",
    "pack_quant_weight": "quant_matmul",
}


@dataclass(frozen=True)
class Ops:
    """One implementation of every op; signatures are those of :mod:`tritonlm.kernels.reference`."""

    backend: str
    rms_norm: Callable
    fused_add_rms_norm: Callable
    rotary_embedding: Callable
    store_kv_cache: Callable
    paged_decode_attention: Callable
    prefill_attention: Callable
    silu_and_mul: Callable
    apply_token_bitmask: Callable
    quant_linear: Callable  # (x [M, K], packed weight, bias) -> [M, N]
    pack_quant_weight: Callable  # QuantizedWeight -> the layout this backend's quant_linear reads


@cache
def get_ops(backend: str) -> Ops:
    """The ops of one backend: ``torch``, ``triton`` or ``interpret``."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r}: expected one of {BACKENDS}")
    if backend == "torch":
        from tritonlm.kernels import cpu_ops, cpu_quant, reference

        funcs = {name: getattr(reference, name) for name in OP_MODULES}
        # native C++ versions where they build (each falls back to the reference by itself):
        # the quantized matmul, and the small per-layer ops whose aten overhead dominated decode
        funcs.update(quant_linear=cpu_quant.quant_linear, pack_quant_weight=cpu_quant.pack_quant_weight)
        funcs.update({name: getattr(cpu_ops, name) for name in cpu_ops.NATIVE_OPS})
        return Ops(backend=backend, **funcs)
    funcs = {}
    for name, module in OP_MODULES.items():
        mod = importlib.import_module(f"tritonlm.kernels.{module}")
        funcs[name] = getattr(mod, name)
    return Ops(backend=backend, **funcs)


__all__ = ["OP_MODULES", "Ops", "get_ops"]
