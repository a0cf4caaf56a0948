"""``dspy.Prediction`` objects built from plain dicts: the result type both integrations share.

It lives at the top of the package so that ``providers`` (whose adapter returns predictions)
and ``dspy_adapter`` can both use it without importing each other. dspy is imported lazily,
on the first prediction built: importing this module (or ``tritonlm``) does not need dspy.

The prediction is a subclass of ``dspy.Prediction`` whose fields are readable three ways:
as attributes (``pred.code``), dict-style (``pred["code"]``, ``pred.keys()``, ``dict(pred.items())``)
and through ``pred.__dict__["code"]``, which some code generators use. The last works because
every field is mirrored into the instance ``__dict__`` and kept in sync on assignment and
deletion. A field whose name is an attribute of the class (``keys``, ``items``, ``get``, ...) or
starts with ``_`` is not mirrored, so it cannot shadow a method or the internal state; it is
still readable dict-style.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from tritonlm.errors import ConfigError


def _mirrorable(cls: type, key: Any) -> bool:
    return isinstance(key, str) and not key.startswith("_") and not hasattr(cls, key)


@functools.cache
def _prediction_class() -> type:
    """The ``dspy.Prediction`` subclass, defined once dspy is importable."""
    import dspy

    class SchemaPrediction(dspy.Prediction):
        """A ``dspy.Prediction`` whose fields are also instance attributes (see module doc)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for key, value in self._store.items():
                if _mirrorable(type(self), key):
                    object.__setattr__(self, key, value)

        def __setattr__(self, key: str, value: Any) -> None:
            super().__setattr__(key, value)
            if _mirrorable(type(self), key):
                object.__setattr__(self, key, value)

        def __setitem__(self, key: str, value: Any) -> None:
            super().__setitem__(key, value)
            if _mirrorable(type(self), key):
                object.__setattr__(self, key, value)

        def __delitem__(self, key: str) -> None:
            super().__delitem__(key)
            self.__dict__.pop(key, None)

        def __delattr__(self, key: str) -> None:
            if key in self._store:
                self.__delitem__(key)
            else:
                super().__delattr__(key)

    return SchemaPrediction


def prediction_from_dict(fields: Mapping[str, Any]) -> Any:
    """A ``dspy.Prediction`` holding ``fields`` (needs dspy installed: ``pip install dspy``)."""
    try:
        cls = _prediction_class()
    except ImportError as exc:
        raise ConfigError("building a dspy.Prediction needs dspy: pip install 'dspy>=3.4'") from exc
    return cls(**dict(fields))


__all__ = ["prediction_from_dict"]
