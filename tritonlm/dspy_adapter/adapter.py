"""``ConstrainedJSONAdapter``: DSPy's JSON format, decoded under a grammar built from the signature.

Formatting is DSPy's JSONAdapter's (instructions, typed input/output field descriptions, demos
as user/assistant pairs, ``dspy.History`` as prior turns). The call adds a ``json_schema``
response format built from the output fields (:mod:`tritonlm.dspy_adapter.schema`), so an LM
that constrains (``lm.supports_response_schema``: tritonlm's engines, and providers with
structured outputs) can only produce an object that parses. With an LM that cannot constrain,
the output is unconstrained text, repaired (``json_repair``), and a failure raises DSPy's
``AdapterParseError`` carrying the raw text.

The signature's schema is built on every call, constrained or not, so an unsupported output
type is a ``SchemaError`` naming the field before anything is generated.
"""

from __future__ import annotations

import json
from typing import Any

from dspy.adapters.json_adapter import JSONAdapter
from dspy.adapters.utils import apply_output_field_defaults, parse_value
from dspy.clients.base_lm import BaseLM
from dspy.signatures.signature import Signature
from dspy.utils.callback import BaseCallback
from dspy.utils.exceptions import AdapterParseError

from tritonlm.dspy_adapter.schema import signature_json_schema

RESPONSE_FORMAT_NAME = "signature_outputs"


class ConstrainedJSONAdapter(JSONAdapter):
    """A ``dspy.Adapter`` whose outputs are decoded under the signature's JSON grammar.

    ``max_string_length`` bounds every free-text output string (``maxLength``) and ``max_items``
    every list (``maxItems``); with both, the output's length is bounded (dict keys excepted).
    ``constrain=False`` never sends the schema (plain text plus repair, for comparison).
    """

    def __init__(
        self,
        callbacks: list[BaseCallback] | None = None,
        *,
        max_string_length: int | None = None,
        max_items: int | None = None,
        constrain: bool = True,
    ) -> None:
        # Tools are formatted into the prompt and answered as JSON, never as native tool calls.
        super().__init__(callbacks=callbacks, use_native_function_calling=False)
        self.max_string_length = max_string_length
        self.max_items = max_items
        self.constrain = constrain

    def response_format(self, signature: type[Signature]) -> dict[str, Any]:
        """The OpenAI-style ``json_schema`` response format for ``signature``'s outputs."""
        schema = signature_json_schema(signature, max_string_length=self.max_string_length, max_items=self.max_items)
        return {"type": "json_schema", "json_schema": {"name": RESPONSE_FORMAT_NAME, "schema": schema, "strict": True}}

    def _prepare_response_format(self, lm: BaseLM, lm_kwargs: dict[str, Any], signature: type[Signature]) -> None:
        response_format = self.response_format(signature)
        if self.constrain and lm.supports_response_schema:
            lm_kwargs["response_format"] = response_format
        else:
            lm_kwargs.pop("response_format", None)

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        """Strict JSON first (what the grammar produces); otherwise JSONAdapter's repair path."""
        try:
            fields = json.loads(completion)
        except json.JSONDecodeError:
            fields = None
        if not isinstance(fields, dict) or not set(fields) <= set(signature.output_fields):
            return super().parse(signature, completion)
        parsed: dict[str, Any] = {}
        for name, value in fields.items():
            try:
                parsed[name] = parse_value(value, signature.output_fields[name].annotation)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                raise AdapterParseError(
                    adapter_name=type(self).__name__,
                    signature=signature,
                    lm_response=completion,
                    message=f"Failed to parse field {name}: {exc}",
                    parsed_result=fields,
                ) from exc
        parsed = apply_output_field_defaults(signature, parsed)
        if parsed.keys() != signature.output_fields.keys():
            raise AdapterParseError(
                adapter_name=type(self).__name__, signature=signature, lm_response=completion, parsed_result=parsed
            )
        return parsed


__all__ = ["RESPONSE_FORMAT_NAME", "ConstrainedJSONAdapter"]
