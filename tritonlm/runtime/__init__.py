"""Continuous-batching runtime: block manager, scheduler, model runner, sampler, engine, LLM API."""

from __future__ import annotations

from tritonlm.runtime.sampling_params import SamplingParams

__all__ = ["SamplingParams"]
