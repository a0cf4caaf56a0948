"""tritonlm: Qwen2.5 inference with Triton kernels, continuous batching and constrained decoding."""

from __future__ import annotations

__version__ = "0.1.0"
