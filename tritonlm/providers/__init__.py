"""Providers for code generators: ``ProviderAdapter`` over a local tritonlm engine or a remote
OpenAI-compatible server, with schema-shaped results and resource tracking.

Importing this package needs neither dspy nor httpx: dspy is imported when the adapter builds
its first ``dspy.Prediction``, httpx when a remote provider opens its client.
"""

from __future__ import annotations

from tritonlm.providers.adapter import ProviderAdapter, ProviderConfig
from tritonlm.providers.base import BaseProvider, ProviderCapabilities, TokenUsage, collect_usage
from tritonlm.providers.errors import ProviderError, ResourceLimitExceeded, StructuredOutputError
from tritonlm.providers.json_output import extract_json_object, parse_structured_output, schema_problems
from tritonlm.providers.local import LocalProvider
from tritonlm.providers.openai_compatible import OpenAICompatibleProvider
from tritonlm.providers.resources import ResourceLimits, ResourceTracker, ResourceUsage
from tritonlm.providers.rust_generator import (
    RUST_GENERATION_SCHEMA,
    RustFunctionSpec,
    RustGenerationResult,
    RustGenerator,
    compile_rust_lib,
    render_rust_source,
)

__all__ = [
    "RUST_GENERATION_SCHEMA",
    "BaseProvider",
    "LocalProvider",
    "OpenAICompatibleProvider",
    "ProviderAdapter",
    "ProviderCapabilities",
    "ProviderConfig",
    "ProviderError",
    "ResourceLimitExceeded",
    "ResourceLimits",
    "ResourceTracker",
    "ResourceUsage",
    "RustFunctionSpec",
    "RustGenerationResult",
    "RustGenerator",
    "StructuredOutputError",
    "TokenUsage",
    "collect_usage",
    "compile_rust_lib",
    "extract_json_object",
    "parse_structured_output",
    "render_rust_source",
    "schema_problems",
]
