"""Provider benches (issue 7). Runs only under ``make bench`` (``pytest benches``); the default-
model ones are also marked slow.

    pytest benches/bench_providers.py -s --benchmark-enable     # gates
    python benches/bench_providers.py                             # the Rust acceptance table

Gates:
* adapter overhead per call, generation excluded, < 1 ms (a provider that answers instantly);
* 8 concurrent ``await adapter(...)`` calls >= 3x faster than 8 sequential ones (LocalProvider on
  the default model, ratio measured in one run);
* the 10 Rust specs of ``tests/providers/support/rust_specs.py`` on the default model: 10/10
  answers validate against the schema, >= 8/10 compile with rustc within the retry budget.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.providers.support.fakes import ScriptedProvider
from tests.providers.support.rust_specs import RUST_SPECS
from tritonlm.providers import LocalProvider, ProviderAdapter, ProviderConfig
from tritonlm.providers.rust import RustGenerationResult, RustGenerator

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "count": {"type": "integer"}, "tags": {"type": "array"}},
    "required": ["name", "count", "tags"],
    "additionalProperties": False,
}
OBJECT = {"name": "widget", "count": 3, "tags": ["a", "b"]}
TEXT = 'Here you go:\n```json\n{"name": "widget", "count": 3, "tags": ["a", "b"]}\n```'
CONCURRENT_CALLS = 8
CONCURRENT_MAX_TOKENS = 48
RUST_MAX_ATTEMPTS = 3
RUST_CANDIDATES = 8
RUST_TEMPERATURE = 0.3
RUST_RETRY_TEMPERATURE = 0.7
SYSTEM_PROMPT = "You are an expert Rust programmer. You answer with JSON only."


# ---- adapter overhead ------------------------------------------------------------------------------
async def _per_call_s(call: Any, calls: int) -> float:
    for _ in range(50):  # warm-up (imports, caches)
        await call()
    start = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - start) / calls


def adapter_overhead(calls: int = 3000) -> dict[str, float]:
    """Per-call seconds of the adapter minus the provider call alone, for both routes."""
    structured = ScriptedProvider(objects=[OBJECT], repeat_last=True)
    text_only = ScriptedProvider(structured_output=False, texts=[TEXT], repeat_last=True)
    structured_adapter = ProviderAdapter(structured)
    text_adapter = ProviderAdapter(text_only, ProviderConfig(use_xgrammar=False))

    async def measure() -> dict[str, float]:
        direct_structured = await _per_call_s(lambda: structured.generate_structured("p", SCHEMA), calls)
        via_structured = await _per_call_s(lambda: structured_adapter(prompt="p", schema=SCHEMA), calls)
        direct_text = await _per_call_s(lambda: text_only.generate_text("p"), calls)
        via_text = await _per_call_s(lambda: text_adapter(prompt="p", schema=SCHEMA), calls)
        return {
            "structured_overhead_ms": (via_structured - direct_structured) * 1e3,
            "text_overhead_ms": (via_text - direct_text) * 1e3,
        }

    result = asyncio.run(measure())
    structured.calls.clear()
    text_only.calls.clear()
    return result


def test_adapter_overhead_per_call_under_1ms(benchmark) -> None:
    result: dict[str, float] = {}
    benchmark.pedantic(lambda: result.update(adapter_overhead()), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\nadapter overhead per call: {result}")
    assert result["structured_overhead_ms"] < 1.0, result
    assert result["text_overhead_ms"] < 1.0, result


# ---- default model ----------------------------------------------------------------------------------
def make_local_provider(loaded: Any) -> LocalProvider:
    from tritonlm.runtime.llm import AsyncLLM

    engine = AsyncLLM.from_loaded(loaded, kv_cache_bytes=2 << 30, max_model_len=4096)
    # the Rust generator's prompt describes every field with a worked example: no schema dump
    return LocalProvider(engine, system_prompt=SYSTEM_PROMPT, describe_schema=False)


@pytest.fixture(scope="module")
def local_provider(default_model_bf16: Any) -> Any:
    provider = make_local_provider(default_model_bf16)
    yield provider
    provider.engine.close()


def concurrent_vs_sequential(provider: LocalProvider) -> dict[str, float]:
    adapter = ProviderAdapter(provider, ProviderConfig(use_xgrammar=False, temperature=0))
    prompts = [f"Write a Python function number {i} that adds two numbers." for i in range(CONCURRENT_CALLS)]

    def call(prompt: str) -> Any:
        return adapter(prompt=prompt, max_tokens=CONCURRENT_MAX_TOKENS, ignore_eos=True)

    async def measure() -> dict[str, float]:
        await call("warm up")
        start = time.perf_counter()
        for prompt in prompts:
            await call(prompt)
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        await asyncio.gather(*(call(p) for p in prompts))
        concurrent = time.perf_counter() - start
        return {"sequential_s": sequential, "concurrent_s": concurrent, "ratio": sequential / concurrent}

    return asyncio.run(measure())


@pytest.mark.slow
def test_concurrent_adapter_calls_3x_faster_than_sequential(benchmark, local_provider) -> None:
    result: dict[str, float] = {}
    benchmark.pedantic(lambda: result.update(concurrent_vs_sequential(local_provider)), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\n{CONCURRENT_CALLS} calls: {result}")
    assert result["ratio"] >= 3.0, result


def run_rust_specs(provider: LocalProvider) -> list[RustGenerationResult]:
    """All 10 specs at once (they share the engine's batches), each with its own retry loop."""
    adapter = ProviderAdapter(provider, ProviderConfig(max_tokens=1024, temperature=RUST_TEMPERATURE))
    generator = RustGenerator(
        adapter,
        max_attempts=RUST_MAX_ATTEMPTS,
        candidates=RUST_CANDIDATES,
        compile_timeout_s=120,
        retry_temperature=RUST_RETRY_TEMPERATURE,
    )

    async def run_all() -> list[RustGenerationResult]:
        return await asyncio.gather(*(generator.generate(spec) for spec in RUST_SPECS))

    return asyncio.run(run_all())


def _first_error(attempt: Any) -> str:
    if attempt.error:
        return attempt.error
    if attempt.compile is not None and not attempt.compile.ok:
        return next((ln for ln in attempt.compile.stderr.splitlines() if ln.startswith("error")), "")
    return ""


def rust_table(results: list[RustGenerationResult]) -> str:
    rows = [
        "| spec | schema valid | compiled | as generated | rounds | compiler edits (compiling candidates, else all) "
        "| first error |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        first_error = next((e for e in map(_first_error, result.attempts) if e), "")
        fixes = (
            sum(a.num_fixes for a in result.attempts if a.compiled)
            if result.compiled
            else sum(a.num_fixes for a in result.attempts)
        )
        rows.append(
            f"| {result.spec.name} | {'yes' if result.schema_valid else 'no'} | {'yes' if result.compiled else 'no'} "
            f"| {'yes' if result.compiled_as_generated else 'no'} | {result.num_rounds} | {fixes} "
            f"| {first_error[:80].replace('|', '/')} |"
        )
    valid = sum(r.schema_valid for r in results)
    compiled = sum(r.compiled for r in results)
    as_generated = sum(r.compiled_as_generated for r in results)
    rows.append(
        f"\nschema-valid {valid}/{len(results)}, compiled {compiled}/{len(results)} "
        f"({as_generated}/{len(results)} with no compiler-suggested edit; at most {RUST_MAX_ATTEMPTS} rounds of "
        f"{RUST_CANDIDATES} candidate(s))"
    )
    return "\n".join(rows)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("rustc") is None, reason="rustc not installed")
def test_rust_specs_validate_and_compile(benchmark, local_provider) -> None:
    results: list[RustGenerationResult] = []
    benchmark.pedantic(lambda: results.extend(run_rust_specs(local_provider)), rounds=1, iterations=1)
    print("\n" + rust_table(results))
    valid = sum(r.schema_valid for r in results)
    compiled = sum(r.compiled for r in results)
    benchmark.extra_info.update(schema_valid=valid, compiled=compiled)
    assert valid == len(RUST_SPECS), rust_table(results)
    assert compiled >= 8, rust_table(results)


def main() -> None:
    """``python benches/bench_providers.py [CANDIDATES]``: the overhead, the concurrency ratio and
    the Rust table (with CANDIDATES answers per round instead of RUST_CANDIDATES)."""
    import os

    global RUST_CANDIDATES
    if len(sys.argv) > 1:
        RUST_CANDIDATES = int(sys.argv[1])
    os.environ.setdefault("TRITON_INTERPRET", "0")
    from tritonlm.model.loader import load_model

    print("adapter overhead:", adapter_overhead())
    # dense bfloat16 weights, the configuration its RESULTS rows name ("default" alone is the GGUF's quantized weights)
    loaded = load_model("default", dtype="bfloat16", backend="torch", quantization=None)
    provider = make_local_provider(loaded)
    try:
        print(f"{CONCURRENT_CALLS} calls:", concurrent_vs_sequential(provider))
        started = time.perf_counter()
        results = run_rust_specs(provider)
        print(rust_table(results))
        print(f"rust specs took {time.perf_counter() - started:.1f}s")
    finally:
        provider.engine.close()


if __name__ == "__main__":
    main()
