"""Continuous-batching runtime.

Layers, bottom up: bookkeeping without torch (``request``, ``block_manager``, ``scheduler``,
``structured_output``, ``output_processor``, ``inputs``, ``sampling_params``, ``openai_params``);
tensors (``model_runner``, ``sampler``); the ``engine`` that steps them; the facade
(``engine_loop``, ``llm``: ``LLM`` and ``AsyncLLM``) that edges such as the server use.
"""

from __future__ import annotations

from tritonlm.runtime.sampling_params import SamplingParams

__all__ = ["SamplingParams"]
