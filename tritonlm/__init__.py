"""tritonlm: Qwen2.5 inference with Triton kernels, continuous batching and constrained decoding.

The public API is small: ``LLM``, ``AsyncLLM``, ``SamplingParams`` and ``RequestLimits`` (imported lazily, so
``import tritonlm`` stays cheap and pulls in no optional dependency), plus ``tritonlm.errors``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tritonlm import errors

__version__ = "0.1.0"

_LAZY = {
    "LLM": "tritonlm.runtime.llm",
    "AsyncLLM": "tritonlm.runtime.llm",
    "SamplingParams": "tritonlm.runtime.sampling_params",
    "RequestLimits": "tritonlm.runtime.config",
}

if TYPE_CHECKING:
    from tritonlm.runtime.config import RequestLimits
    from tritonlm.runtime.llm import LLM, AsyncLLM
    from tritonlm.runtime.sampling_params import SamplingParams


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tritonlm' has no attribute {name!r}")


__all__ = ["LLM", "AsyncLLM", "RequestLimits", "SamplingParams", "__version__", "errors"]
