"""``dspy.streamify`` listeners that recognise :class:`ConstrainedJSONAdapter`.

dspy 3.4's ``StreamListener`` looks its field delimiters up by the configured adapter's class
*name* (``ChatAdapter``, ``JSONAdapter``, ``XMLAdapter``) and refuses any other name, while its
JSON handling tests ``isinstance(adapter, JSONAdapter)``. ``ConstrainedJSONAdapter`` is a
JSONAdapter writing the same JSON, so this listener registers its name with JSONAdapter's
delimiters; nothing in dspy is patched. Use it wherever ``dspy.streaming.StreamListener`` goes.
"""

from __future__ import annotations

from typing import Any

from dspy.streaming import StreamListener as DSPyStreamListener

from tritonlm.dspy_adapter.adapter import ConstrainedJSONAdapter


class StreamListener(DSPyStreamListener):
    """A ``dspy.streaming.StreamListener`` that also accepts ``ConstrainedJSONAdapter`` (and subclasses
    named in ``extra_json_adapters``)."""

    def __init__(self, *args: Any, extra_json_adapters: tuple[type, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        json_delimiters = self.adapter_identifiers["JSONAdapter"]
        for adapter_class in (ConstrainedJSONAdapter, *extra_json_adapters):
            self.adapter_identifiers[adapter_class.__name__] = json_delimiters


__all__ = ["StreamListener"]
