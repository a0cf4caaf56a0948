"""DSPy integration: tritonlm as a ``dspy.LM`` engine, a grammar-constrained Adapter, ReAct and
streaming helpers. The only package of tritonlm that imports dspy (``pip install 'dspy>=3.4'``).

Quick start::

    import dspy
    from tritonlm import dspy_adapter

    dspy.configure(lm=dspy_adapter.lm(), adapter=dspy_adapter.ConstrainedJSONAdapter())

Names are resolved lazily: importing this package (or ``dspy_adapter.prediction``) does not
import dspy; using any of the names below does.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "lm": "language_model",
    "TritonLM": "language_model",
    "TritonEngine": "engine",
    "AsyncTritonEngine": "engine",
    "engine_pair": "engine",
    "ConstrainedJSONAdapter": "adapter",
    "signature_json_schema": "schema",
    "ReAct": "react",
    "constrain_react": "react",
    "StreamListener": "streaming",
    "prediction_from_dict": "prediction",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
