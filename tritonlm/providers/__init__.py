"""Providers for code generators: ``ProviderAdapter`` over a local tritonlm engine or a remote
OpenAI-compatible server, with schema-shaped results and resource tracking.

The reference Rust generator built on them lives in :mod:`tritonlm.providers.rust` (not
imported here).

Importing this package needs neither dspy nor httpx: dspy is imported when the adapter builds
its first ``dspy.Prediction``, httpx when a remote provider opens its client.
"""

from __future__ import annotations

from tritonlm.providers.adapter import ProviderAdapter, ProviderConfig
from tritonlm.providers.base import (
    BaseProvider,
    Provider,
    ProviderCapabilities,
    TokenUsage,
    collect_usage,
    report_usage,
)
from tritonlm.providers.errors import ProviderError, ResourceLimitExceeded, StructuredOutputError
from tritonlm.providers.json_output import extract_json_object, parse_structured_output, schema_problems
from tritonlm.providers.local import LocalProvider
from tritonlm.providers.openai_compatible import OpenAICompatibleProvider
from tritonlm.providers.resources import ResourceLimits, ResourceTracker, ResourceUsage

__all__ = [
    "BaseProvider",
    "LocalProvider",
    "OpenAICompatibleProvider",
    "Provider",
    "ProviderAdapter",
    "ProviderCapabilities",
    "ProviderConfig",
    "ProviderError",
    "ResourceLimitExceeded",
    "ResourceLimits",
    "ResourceTracker",
    "ResourceUsage",
    "StructuredOutputError",
    "TokenUsage",
    "collect_usage",
    "extract_json_object",
    "parse_structured_output",
    "report_usage",
    "schema_problems",
]
