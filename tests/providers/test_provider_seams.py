"""The providers' seams: the ``Provider`` protocol (any object with its members serves the
adapter), the import directions between the integration packages, and LocalProvider's
options going through the runtime's one translator."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.server.support import tiny_llm
from tritonlm.errors import ConfigError
from tritonlm.providers import (
    LocalProvider,
    Provider,
    ProviderAdapter,
    ProviderCapabilities,
    ProviderConfig,
    ProviderError,
    report_usage,
)

pytest.importorskip("dspy")


class DuckProvider:
    """A provider that is no BaseProvider: only the protocol's members."""

    name = "duck"
    capabilities = ProviderCapabilities()
    supports_structured_output = False

    async def generate_text(self, prompt: str, max_tokens: int = 2048, temperature: float = 0.3, **kw: Any) -> str:
        report_usage(5, 3)
        return f"echo {prompt}"

    async def generate_stream(self, prompt: str, **kw: Any) -> AsyncIterator[str]:
        yield prompt

    async def generate_structured(self, prompt: str, schema: dict[str, Any], **kw: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def check_health(self) -> bool:
        return True

    def count_prompt_tokens(self, prompt: str) -> int | None:
        return None


def test_any_object_with_the_protocols_members_is_a_provider() -> None:
    duck = DuckProvider()
    assert isinstance(duck, Provider)
    adapter = ProviderAdapter(duck, ProviderConfig(use_xgrammar=False))
    prediction = asyncio.run(adapter(prompt="hi"))
    assert prediction.text == "echo hi"
    usage = adapter.get_resource_usage()
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (5, 3)


def test_an_object_without_the_protocols_members_is_refused() -> None:
    assert not isinstance(object(), Provider)
    with pytest.raises(ConfigError, match="Provider"):
        ProviderAdapter(object())  # type: ignore[arg-type]


def _run_python(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_the_integration_packages_do_not_import_each_other() -> None:
    _run_python(
        "import sys, tritonlm.providers, tritonlm.providers.rust\n"
        "assert not [m for m in sys.modules if m.startswith('tritonlm.dspy_adapter')], 'providers -> dspy_adapter'\n"
    )
    _run_python(
        "import sys, tritonlm.dspy_adapter.engine, tritonlm.dspy_adapter.language_model\n"
        "import tritonlm.dspy_adapter.react, tritonlm.dspy_adapter.streaming, tritonlm.dspy_adapter.adapter\n"
        "assert not [m for m in sys.modules if m.startswith('tritonlm.providers')], 'dspy_adapter -> providers'\n"
    )


def test_providers_do_not_import_the_rust_generator() -> None:
    _run_python("import sys, tritonlm.providers\nassert 'tritonlm.providers.rust' not in sys.modules\n")


@pytest.fixture(scope="module")
def provider(qwen_tokenizer: Any) -> Iterator[LocalProvider]:
    llm = tiny_llm(qwen_tokenizer, num_kv_blocks=64, max_model_len=256)
    yield LocalProvider(llm)
    llm.close()


def test_local_provider_counts_prompt_tokens_through_the_facade(provider: LocalProvider) -> None:
    messages = provider.messages("count me")
    assert provider.count_prompt_tokens("count me") == len(provider.engine.tokenize(messages)) > 3


@pytest.mark.parametrize("option", [{"n": 2}, {"response_format": {"type": "json_object"}}, {"bogus": 1}])
def test_local_provider_refuses_options_it_cannot_honour(provider: LocalProvider, option: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="unsupported generation options"):
        asyncio.run(provider.generate_text("p", max_tokens=2, **option))
    adapter = ProviderAdapter(provider, ProviderConfig(use_xgrammar=False))
    with pytest.raises(ProviderError, match="unsupported generation options"):
        asyncio.run(adapter(prompt="p", max_tokens=2, **option))


def test_local_provider_passes_sampling_options_and_checks_their_ranges(provider: LocalProvider) -> None:
    text = asyncio.run(provider.generate_text("p", max_tokens=3, temperature=0, stop=["\n\n"], seed=1, top_k=5))
    assert isinstance(text, str)
    with pytest.raises(ConfigError, match="top_k"):
        asyncio.run(provider.generate_text("p", max_tokens=3, top_k=-7))
    assert asyncio.run(provider.check_health())
