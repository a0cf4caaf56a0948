"""DSPy integration: tritonlm as a ``dspy.LM`` engine, a grammar-constrained Adapter, ReAct and
streaming helpers. The only package of tritonlm that imports dspy (``pip install 'dspy>=3.4'``).

Quick start::

    import dspy
    from tritonlm import dspy_adapter

    dspy.configure(lm=dspy_adapter.lm(), adapter=dspy_adapter.ConstrainedJSONAdapter())

Names are resolved lazily: importing this package does not import dspy; using any of the
names below does (``prediction_from_dict`` is :func:`tritonlm.prediction.prediction_from_dict`,
shared with ``tritonlm.providers``).
"""

from __future__ import annotations

import importlib
from typing import Any

# exported name -> the module defining it
_EXPORTS = {
    "lm": f"{__name__}.language_model",
    "TritonLM": f"{__name__}.language_model",
    "TritonEngine": f"{__name__}.engine",
    "AsyncTritonEngine": f"{__name__}.engine",
    "engine_pair": f"{__name__}.engine",
    "ConstrainedJSONAdapter": f"{__name__}.adapter",
    "signature_json_schema": f"{__name__}.schema",
    "ReAct": f"{__name__}.react",
    "constrain_react": f"{__name__}.react",
    "StreamListener": f"{__name__}.streaming",
    "prediction_from_dict": "tritonlm.prediction",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
