"""ProviderAdapter, JSON extraction, resource tracking and the Rust generator, on a scripted
provider (no engine): routing, overrides, error wrapping, limits, the dspy-free import."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import pytest

from tests.providers.support.fakes import ScriptedProvider
from tritonlm.errors import ConfigError, ParseError, TritonLMError
from tritonlm.providers import (
    ProviderAdapter,
    ProviderCapabilities,
    ProviderConfig,
    ProviderError,
    ResourceLimitExceeded,
    ResourceLimits,
    ResourceTracker,
    StructuredOutputError,
    extract_json_object,
    schema_problems,
)
from tritonlm.providers.rust import RUST_GENERATION_SCHEMA, RustFunctionSpec, RustGenerator, render_rust_source

dspy = pytest.importorskip("dspy")

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "count": {"type": "integer", "minimum": 0}},
    "required": ["name", "count"],
    "additionalProperties": False,
}
TEXT_ONLY = ProviderConfig(use_xgrammar=False)


def run(coro):
    return asyncio.run(coro)


# ---- configuration --------------------------------------------------------------------------
def test_provider_config_defaults_and_validation() -> None:
    config = ProviderConfig()
    assert (config.max_tokens, config.temperature, config.top_p) == (2048, 0.3, 0.95)
    assert config.use_xgrammar is True and config.track_resources is True
    for bad in ({"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"use_xgrammar": "yes"}):
        with pytest.raises(ValueError):
            ProviderConfig(**bad)
    with pytest.raises(ValueError):
        ProviderConfig(max_tokenz=3)


def test_use_xgrammar_needs_a_structured_output_provider() -> None:
    text_only = ScriptedProvider(structured_output=False)
    with pytest.raises(ValueError, match="structured output"):
        ProviderAdapter(text_only)
    ProviderAdapter(text_only, TEXT_ONLY)  # extraction from text is fine
    assert ProviderAdapter(ScriptedProvider(structured_output=True)).provider.supports_structured_output


def test_capabilities_and_properties() -> None:
    provider = ScriptedProvider(structured_output=False, streaming=True)
    assert provider.supports_streaming and not provider.supports_structured_output
    assert provider.capabilities == ProviderCapabilities(streaming=True, structured_output=False, reasoning=False)
    with pytest.raises(ConfigError):
        ProviderCapabilities(streaming="yes")  # type: ignore[arg-type]


# ---- routing --------------------------------------------------------------------------------
def test_schema_call_on_a_structured_provider_uses_generate_structured() -> None:
    provider = ScriptedProvider(objects=[{"name": "x", "count": 3}])
    pred = run(ProviderAdapter(provider)(prompt="p", schema=SCHEMA))
    assert [c.method for c in provider.calls] == ["generate_structured"]
    assert provider.calls[0].kwargs["schema"] == SCHEMA
    assert isinstance(pred, dspy.Prediction)
    assert pred.name == "x" and pred["count"] == 3
    assert pred.__dict__["name"] == "x" and pred.__dict__["count"] == 3
    assert dict(pred.items()) == {"name": "x", "count": 3}


def test_schema_call_without_constrained_decoding_extracts_json_from_text() -> None:
    text = 'Sure.\n```json\n{"name": "fenced", "count": 2}\n```\nand {"name": "bare", "count": 9}'
    provider = ScriptedProvider(texts=[text])
    pred = run(ProviderAdapter(provider, TEXT_ONLY)(prompt="p", schema=SCHEMA))
    assert [c.method for c in provider.calls] == ["generate_text"]
    assert (pred.name, pred.count) == ("fenced", 2)


def test_text_route_on_a_text_only_provider_and_no_schema_call() -> None:
    provider = ScriptedProvider(
        structured_output=False, texts=['noise {"a": {"b": "}"}} {"name": "n", "count": 1}', "hi"]
    )
    adapter = ProviderAdapter(provider, TEXT_ONLY)
    with pytest.raises(StructuredOutputError):  # first balanced object parses but does not validate
        run(adapter(prompt="p", schema=SCHEMA))
    pred = run(adapter(prompt="q"))
    assert pred.text == "hi" and pred.__dict__["text"] == "hi"
    assert [c.method for c in provider.calls] == ["generate_text", "generate_text"]


def test_invalid_text_raises_a_parse_error_carrying_the_raw_text() -> None:
    raw = 'here: {"name": "x", "count": -4}'
    adapter = ProviderAdapter(ScriptedProvider(texts=[raw, "no json at all"]), TEXT_ONLY)
    with pytest.raises(StructuredOutputError) as info:
        run(adapter(prompt="p", schema=SCHEMA))
    assert isinstance(info.value, ParseError) and info.value.raw_text == raw
    assert any("minimum" in p for p in info.value.problems)
    with pytest.raises(StructuredOutputError) as info:
        run(adapter(prompt="p", schema=SCHEMA))
    assert info.value.raw_text == "no json at all"


def test_a_structured_provider_returning_an_invalid_object_is_refused() -> None:
    adapter = ProviderAdapter(ScriptedProvider(objects=[{"name": "x"}]))
    with pytest.raises(StructuredOutputError, match="count") as info:
        run(adapter(prompt="p", schema=SCHEMA))
    assert json.loads(info.value.raw_text) == {"name": "x"}


# ---- overrides --------------------------------------------------------------------------------
def test_config_defaults_and_per_call_overrides_reach_the_provider() -> None:
    provider = ScriptedProvider(texts=["a", "b"], objects=[{"name": "x", "count": 0}])
    config = ProviderConfig(max_tokens=100, temperature=0.5, top_p=0.9, use_xgrammar=True)
    adapter = ProviderAdapter(provider, config)
    run(adapter(prompt="p1"))
    run(adapter(prompt="p2", max_tokens=7, temperature=0.0, top_p=0.5, stop=["\n"], seed=42))
    run(adapter(prompt="p3", schema=SCHEMA, max_tokens=9, temperature=1.25, top_p=0.75))
    first, second, third = (c.kwargs for c in provider.calls)
    assert first == {"max_tokens": 100, "temperature": 0.5, "top_p": 0.9}
    assert second == {"max_tokens": 7, "temperature": 0.0, "top_p": 0.5, "stop": ["\n"], "seed": 42}
    assert {k: third[k] for k in ("max_tokens", "temperature", "top_p")} == {
        "max_tokens": 9,
        "temperature": 1.25,
        "top_p": 0.75,
    }
    assert [c.prompt for c in provider.calls] == ["p1", "p2", "p3"]
    with pytest.raises(ConfigError):
        run(adapter(prompt="p", max_tokens=0))
    with pytest.raises(ConfigError):
        run(adapter(prompt="p", top_p=2.0))
    assert len(provider.calls) == 3  # refused before reaching the provider


# ---- error wrapping -----------------------------------------------------------------------------
def test_provider_failures_surface_as_provider_error_with_the_cause() -> None:
    cause = ConnectionError("server went away")
    adapter = ProviderAdapter(ScriptedProvider(texts=[cause, ValueError("bad")]), TEXT_ONLY)
    with pytest.raises(ProviderError) as info:
        run(adapter(prompt="p"))
    assert info.value.__cause__ is cause and isinstance(info.value, TritonLMError)
    assert info.value.provider == "scripted" and "server went away" in str(info.value)
    with pytest.raises(ProviderError) as info:
        run(adapter(prompt="p", schema=SCHEMA))
    assert isinstance(info.value.__cause__, ValueError)
    tracker = adapter.resource_tracker
    assert tracker is not None and tracker.usage.llm_calls == 2 and tracker.usage.failed_calls == 2


def test_cancellation_is_not_wrapped() -> None:
    adapter = ProviderAdapter(ScriptedProvider(texts=["x"], delay_s=5.0), TEXT_ONLY)

    async def cancel_it() -> None:
        task = asyncio.create_task(adapter(prompt="p"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel_it())
    assert adapter.resource_tracker is not None and adapter.resource_tracker.usage.failed_calls == 1


# ---- resources -------------------------------------------------------------------------------------
def test_tracker_counts_reported_usage_calls_and_latency() -> None:
    provider = ScriptedProvider(texts=["a", "b", "c"], usage=(13, 5), delay_s=0.02)
    adapter = ProviderAdapter(provider, TEXT_ONLY)
    for _ in range(3):
        run(adapter(prompt="p"))
    usage = adapter.get_resource_usage()
    assert usage is not None
    assert (usage.llm_calls, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 39, 15, 54)
    assert 0.06 <= usage.total_latency_s < 2.0 and usage.failed_calls == 0
    assert all(r.latency_s >= 0.02 for r in adapter.resource_tracker.records)  # type: ignore[union-attr]


def test_no_tracking_when_disabled_and_pluggable_tracker() -> None:
    provider = ScriptedProvider(texts=["a", "b"])
    adapter = ProviderAdapter(provider, ProviderConfig(use_xgrammar=False, track_resources=False))
    run(adapter(prompt="p"))
    assert adapter.resource_tracker is None and adapter.get_resource_usage() is None
    shared = ResourceTracker()
    adapter.set_resource_tracker(shared)
    run(adapter(prompt="p"))
    assert shared.usage.llm_calls == 1 and shared.usage.prompt_tokens == 11
    with pytest.raises(ConfigError):
        adapter.set_resource_tracker(object())  # type: ignore[arg-type]


def test_call_limit_refuses_the_call_that_would_exceed_it() -> None:
    provider = ScriptedProvider(texts=["a"], repeat_last=True)
    adapter = ProviderAdapter(provider, TEXT_ONLY)
    adapter.set_resource_tracker(ResourceTracker(ResourceLimits(max_llm_calls=2)))
    run(adapter(prompt="p"))
    run(adapter(prompt="p"))
    with pytest.raises(ResourceLimitExceeded) as info:
        run(adapter(prompt="p"))
    assert info.value.limit == "max_llm_calls" and len(provider.calls) == 2


def test_token_limit_counts_real_usage_and_reserves_max_tokens() -> None:
    provider = ScriptedProvider(texts=["a"], repeat_last=True, usage=(30, 10))
    adapter = ProviderAdapter(provider, ProviderConfig(use_xgrammar=False, max_tokens=20))
    adapter.set_resource_tracker(ResourceTracker(ResourceLimits(max_tokens=90)))
    run(adapter(prompt="p"))  # 0 used + 20 reserved <= 90; uses 40
    run(adapter(prompt="p"))  # 40 + 20 <= 90; uses 40 -> 80
    with pytest.raises(ResourceLimitExceeded) as info:
        run(adapter(prompt="p"))  # 80 + 20 > 90
    assert info.value.limit == "max_tokens" and len(provider.calls) == 2
    run(adapter(prompt="p", max_tokens=10))  # 80 + 10 <= 90
    assert len(provider.calls) == 3
    usage = adapter.get_resource_usage()
    assert usage is not None and usage.total_tokens == 120 and usage.llm_calls == 3


def test_concurrent_calls_cannot_jointly_overshoot_the_call_limit() -> None:
    provider = ScriptedProvider(texts=["a"], repeat_last=True, delay_s=0.05)
    adapter = ProviderAdapter(provider, TEXT_ONLY)
    adapter.set_resource_tracker(ResourceTracker(ResourceLimits(max_llm_calls=3)))

    async def burst() -> list[object]:
        return await asyncio.gather(*(adapter(prompt=f"p{i}") for i in range(5)), return_exceptions=True)

    results = run(burst())
    refused = [r for r in results if isinstance(r, ResourceLimitExceeded)]
    assert len(refused) == 2 and len(provider.calls) == 3


def test_wall_budget_refuses_and_cancels() -> None:
    provider = ScriptedProvider(texts=["a"], repeat_last=True, delay_s=0.3)
    adapter = ProviderAdapter(provider, TEXT_ONLY)
    adapter.set_resource_tracker(ResourceTracker(ResourceLimits(max_wall_s=0.1)))
    with pytest.raises(ResourceLimitExceeded) as info:
        run(adapter(prompt="p"))  # runs past the budget: cancelled
    assert info.value.limit == "max_wall_s"
    with pytest.raises(ResourceLimitExceeded):
        run(adapter(prompt="p"))  # budget spent: refused before the provider
    assert len(provider.calls) == 1


def test_resource_limits_validate() -> None:
    for bad in ({"max_tokens": 0}, {"max_llm_calls": -1}, {"max_wall_s": 0}):
        with pytest.raises(ValueError):
            ResourceLimits(**bad)


# ---- JSON extraction and validation -------------------------------------------------------------
def test_extract_json_object_prefers_fences_and_respects_strings() -> None:
    assert extract_json_object('x ```\n{"a": 1}\n``` ```json\n{"b": 2}\n```') == {"b": 2}
    assert extract_json_object('say "}" then {"k": "a } b", "n": [1, {"m": 2}]} tail') == {
        "k": "a } b",
        "n": [1, {"m": 2}],
    }
    assert extract_json_object('{broken {"ok": true}') == {"ok": True}
    assert extract_json_object("[1, 2]") is None and extract_json_object("") is None


def test_schema_validation_agrees_with_jsonschema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = {
        "$defs": {"item": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}},
        "type": "object",
        "properties": {
            "kind": {"enum": ["a", "b"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
            "item": {"$ref": "#/$defs/item"},
            "either": {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 1}]},
            "flag": {"type": "boolean"},
        },
        "required": ["kind"],
        "additionalProperties": False,
    }
    values = [
        {"kind": "a"},
        {"kind": "c"},
        {"kind": "a", "tags": ["x", "y"]},
        {"kind": "a", "tags": ["x", "y", "z"]},
        {"kind": "a", "tags": ["long"]},
        {"kind": "b", "item": {"id": 1}},
        {"kind": "b", "item": {"id": "1"}},
        {"kind": "b", "item": {}},
        {"kind": "a", "either": None},
        {"kind": "a", "either": 0.5},
        {"kind": "a", "flag": 1},
        {"kind": "a", "extra": 1},
        {"kind": "a", "either": 2, "flag": True},
    ]
    for value in values:
        expected = jsonschema.Draft202012Validator(schema).is_valid(value)
        assert (schema_problems(value, schema) == []) is expected, value


# ---- Rust generator with a scripted provider ------------------------------------------------------
def _generation(body: str, **overrides: object) -> dict[str, object]:
    generation: dict[str, object] = {
        "imports": ["std::cmp::Ordering"],
        "lifetimes": ["'a"],
        "generic_params": [{"name": "T", "trait_bounds": ["PartialOrd", "Copy"]}],
        "variables": [{"name": "best", "type": "Option<T>", "mutable": True, "initial_value": "None"}],
        "error_handling": {"strategy": "option", "error_type": "None", "description": "None when items is empty."},
        "helper_functions": [
            {"name": "greater", "code": "fn greater<T: PartialOrd>(a: T, b: T) -> bool {\n    a > b\n}"}
        ],
        "implementation_body": body,
    }
    generation.update(overrides)
    return generation


MAX_SPEC = RustFunctionSpec(
    name="max_of", description="Largest element.", parameters=(("items", "&'a [T]"),), return_type="Option<T>"
)
GOOD_BODY = (
    "for &item in items {\n"
    "    best = match best {\n"
    "        Some(b) if !greater(item, b) || item.partial_cmp(&b) == Some(Ordering::Equal) => Some(b),\n"
    "        _ => Some(item),\n"
    "    };\n"
    "}\n"
    "best"
)


def test_rendered_source_uses_every_part_of_the_schema() -> None:
    generation = _generation(GOOD_BODY)
    assert schema_problems(generation, RUST_GENERATION_SCHEMA) == []
    source = render_rust_source(MAX_SPEC, generation)
    assert "use std::cmp::Ordering;" in source
    assert "fn greater<T: PartialOrd>(a: T, b: T) -> bool" in source
    assert "pub fn max_of<'a, T: PartialOrd + Copy>(items: &'a [T]) -> Option<T> {" in source
    assert "let mut best: Option<T> = None;" in source
    assert "/// None when items is empty. (`None`)" in source and "#[must_use]" in source
    assert "        Some(b) if" in source  # body indented inside the function


@pytest.mark.skipif(shutil.which("rustc") is None, reason="rustc not installed")
def test_rust_generator_retries_with_the_compiler_error_until_it_compiles() -> None:
    broken = _generation("best.unwrap_or_else(|| undefined_name)")
    provider = ScriptedProvider(objects=[broken, _generation(GOOD_BODY)])
    generator = RustGenerator(ProviderAdapter(provider), max_attempts=3, compile_timeout_s=120)
    result = run(generator.generate(MAX_SPEC))
    assert len(result.attempts) == 2 and result.compiled and result.schema_valid
    first, second = result.attempts
    assert not first.compile.ok and "undefined_name" in first.compile.stderr  # type: ignore[union-attr]
    retry_prompt = provider.calls[1].prompt
    assert "undefined_name" in retry_prompt and "E0425" in retry_prompt and first.source in retry_prompt
    assert result.source == second.source


@pytest.mark.skipif(shutil.which("rustc") is None, reason="rustc not installed")
def test_rust_generator_gives_up_after_max_attempts_and_records_invalid_answers() -> None:
    provider = ScriptedProvider(objects=[{"imports": []}, _generation("nope(")], repeat_last=True)
    result = run(RustGenerator(ProviderAdapter(provider), max_attempts=3).generate(MAX_SPEC))
    assert len(result.attempts) == 3 and not result.compiled and not result.schema_valid
    assert result.attempts[0].generation is None and "required" in (result.attempts[0].error or "")
    assert "not valid" in provider.calls[1].prompt


# ---- import hygiene --------------------------------------------------------------------------------
def test_tritonlm_and_providers_import_without_dspy_or_httpx() -> None:
    code = (
        "import sys; sys.modules['dspy'] = None; sys.modules['httpx'] = None\n"
        "import tritonlm, tritonlm.providers, tritonlm.prediction\n"
        "from tritonlm.providers import ProviderAdapter, LocalProvider, OpenAICompatibleProvider\n"
        "assert 'dspy' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "try:\n"
        "    tritonlm.prediction.prediction_from_dict({'a': 1})\n"
        "except tritonlm.errors.ConfigError as exc:\n"
        "    print('no-dspy:', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no-dspy: building a dspy.Prediction needs dspy" in result.stdout


@pytest.mark.skipif(shutil.which("rustc") is None, reason="rustc not installed")
def test_the_prompts_worked_example_validates_and_compiles() -> None:
    from tritonlm.providers.rust import EXAMPLE_GENERATION, EXAMPLE_SPEC, compile_rust_lib

    assert schema_problems(EXAMPLE_GENERATION, RUST_GENERATION_SCHEMA) == []
    source = render_rust_source(EXAMPLE_SPEC, EXAMPLE_GENERATION)
    assert run(compile_rust_lib(source)).ok
    prompt = RustGenerator.build_prompt(MAX_SPEC)
    assert source in prompt and "pub fn max_of(items: &'a [T]) -> Option<T>" in prompt


@pytest.mark.skipif(shutil.which("rustc") is None, reason="rustc not installed")
def test_retries_use_the_retry_temperature() -> None:
    provider = ScriptedProvider(objects=[_generation("nope("), _generation(GOOD_BODY)])
    generator = RustGenerator(ProviderAdapter(provider), temperature=0.2, retry_temperature=0.9, max_tokens=321)
    assert run(generator.generate(MAX_SPEC)).compiled
    assert [(c.kwargs["temperature"], c.kwargs["max_tokens"]) for c in provider.calls] == [(0.2, 321), (0.9, 321)]


@pytest.mark.skipif(shutil.which("rustc") is None, reason="rustc not installed")
def test_the_signatures_lifetimes_are_declared_even_if_the_model_lists_none() -> None:
    from tritonlm.providers.rust import EXAMPLE_GENERATION, compile_rust_lib

    spec = RustFunctionSpec(
        name="longest",
        description="The longer of a and b.",
        parameters=(("a", "&'a str"), ("b", "&'a str")),
        return_type="&'a str",
    )
    generation = {
        **EXAMPLE_GENERATION,
        "lifetimes": [],
        "generic_params": [],
        "variables": [],
        "helper_functions": [],
        "imports": [],
        "implementation_body": "if b.len() > a.len() { b } else { a }",
    }
    source = render_rust_source(spec, generation)
    assert "pub fn longest<'a>(a: &'a str, b: &'a str) -> &'a str {" in source
    assert run(compile_rust_lib(source)).ok, source


# ---- compiler-suggested edits and candidates ------------------------------------------------------
def test_apply_suggestions_skips_conflicts_and_keeps_insertion_order() -> None:
    from tritonlm.providers.rust import SuggestedEdit, apply_suggestions

    source = "fn é() { let x = 1; }"  # offsets are UTF-8 bytes: 'é' is two
    body = source.encode().index(b"let")
    suggestions = (
        (SuggestedEdit(0, 0, "use a;\n"),),
        (SuggestedEdit(0, 0, "use b;\n"),),
        (SuggestedEdit(body, body + 3, "const"),),
        (SuggestedEdit(body + 1, body + 2, "X"),),  # inside the replaced "let": skipped whole
        (SuggestedEdit(body + 4, body + 5, "y"), SuggestedEdit(0, 0, "use c;\n")),  # multi-part, kept
        (SuggestedEdit(body, body + 3, "const"),),  # the same edit from another diagnostic
    )
    fixed, applied = apply_suggestions(source, suggestions)
    assert fixed == "use a;\nuse b;\nuse c;\nfn é() { const y = 1; }"
    assert applied == 4


@pytest.mark.skipif(shutil.which("rustc") is None, reason="rustc not installed")
def test_compiler_suggestions_repair_imports_bounds_and_conversions() -> None:
    from tritonlm.providers.rust import compile_with_fixes

    source = (
        "pub fn describe<T: Debug>(x: T) -> String {\n"
        "    let counts: HashMap<String, usize> = HashMap::new();\n"
        '    format!("{:?} {}", x, counts.len())\n}\n'
        "pub fn safe_divide(a: i32, b: i32) -> Result<i32, String> {\n"
        '    if b == 0 { return Err("division by zero"); }\n    Ok(a / b)\n}\n'
        "pub fn largest<T: PartialOrd + Copy>(items: &[T]) -> Option<T> {\n"
        "    items.iter().copied().max()\n}\n"
    )
    unfixed, result, applied = run(compile_with_fixes(source, max_rounds=0))
    assert unfixed == source and not result.ok and applied == 0 and result.suggestions
    assert "cannot find" in result.stderr and '"rendered"' not in result.stderr  # human text, not JSON
    fixed, result, applied = run(compile_with_fixes(source))
    assert result.ok, fixed + result.stderr
    assert "use std::fmt::Debug;" in fixed and "use std::collections::HashMap;" in fixed
    assert '"division by zero".to_string()' in fixed and "Ord" in fixed.split("largest")[1].split("(")[0]
    assert applied >= 4


@pytest.mark.skipif(shutil.which("rustc") is None, reason="rustc not installed")
def test_generator_applies_compiler_fixes_unless_told_not_to() -> None:
    needs_ord = _generation("best = items.iter().copied().max();\nbest")
    provider = ScriptedProvider(objects=[needs_ord], repeat_last=True)
    fixed = run(RustGenerator(ProviderAdapter(provider), max_attempts=2).generate(MAX_SPEC))
    assert fixed.compiled and not fixed.compiled_as_generated and fixed.num_rounds == 1
    [attempt] = fixed.attempts
    assert attempt.num_fixes >= 1 and attempt.source != attempt.generated_source
    assert "T: PartialOrd + Copy>" in attempt.generated_source  # type: ignore[operator]
    assert "Ord>" in fixed.source and fixed.source == attempt.source  # type: ignore[operator]
    plain = run(RustGenerator(ProviderAdapter(provider), max_attempts=2, compiler_fixes=False).generate(MAX_SPEC))
    assert not plain.compiled and plain.num_rounds == 2
    assert all(a.num_fixes == 0 and a.source == a.generated_source for a in plain.attempts)
    # of two compiling candidates, the one that compiled as generated is the result's source
    both = ScriptedProvider(objects=[needs_ord, _generation(GOOD_BODY)])
    result = run(RustGenerator(ProviderAdapter(both), candidates=2).generate(MAX_SPEC))
    assert [a.compiled for a in result.attempts] == [True, True] and result.attempts[0].num_fixes >= 1
    assert result.source == result.attempts[1].source == result.attempts[1].generated_source


@pytest.mark.skipif(shutil.which("rustc") is None, reason="rustc not installed")
def test_candidates_run_concurrently_and_the_one_with_fewest_errors_is_fed_back() -> None:
    two_errors = _generation("zzq_first_missing();\nzzq_second_missing()")
    one_error = _generation("zzq_third_missing()")
    provider = ScriptedProvider(objects=[one_error, two_errors, one_error, _generation(GOOD_BODY)], delay_s=0.2)
    generator = RustGenerator(
        ProviderAdapter(provider), max_attempts=3, candidates=2, temperature=0.3, retry_temperature=0.7
    )
    result = run(generator.generate(MAX_SPEC))
    assert result.compiled and result.num_rounds == 2 and len(result.attempts) == 4
    assert [a.round for a in result.attempts] == [0, 0, 1, 1]
    assert [a.compiled for a in result.attempts] == [False, False, False, True]
    assert provider.max_in_flight == 2  # a round's candidates are asked at once
    assert [c.kwargs["temperature"] for c in provider.calls] == [0.3, 0.7, 0.7, 0.7]
    retry_prompts = [c.prompt for c in provider.calls[2:]]
    assert all("zzq_third_missing" in p and "zzq_first_missing" not in p for p in retry_prompts)
    assert result.source == result.attempts[3].source
    with pytest.raises(ConfigError, match="candidates"):
        RustGenerator(ProviderAdapter(provider), candidates=0)


def test_generation_schema_keeps_bodies_balanced_and_free_of_fn_items() -> None:
    from tritonlm.providers.rust import EXAMPLE_GENERATION

    def problems(**fields: object) -> list[str]:
        return schema_problems({**EXAMPLE_GENERATION, **fields}, RUST_GENERATION_SCHEMA)

    good_bodies = [
        GOOD_BODY,
        'if x { format!("{} {", y) } else { "}".to_string() }',  # braces inside strings do not count
        "let f = |x| x + 1;\nif f(2) > 0 { xfn(&'a x) } else { 0 }",  # `f` and `fn` inside words are fine
        "for w in text.split_whitespace() {\n    *m.entry(w.to_string()).or_insert(0) += 1;\n}\nm",
    ]
    for body in good_bodies:
        assert problems(implementation_body=body) == [], body
    bad_bodies = [
        "match n { 0 => 1, _ => 2 }}",  # closes the function itself
        "match n {\n    0 => 1,",  # left open
        "fn is_even(n: i64) -> bool { n % 2 == 0 }\nis_even(n)",  # an item, not statements
        "fnis_even { n % 2 == 0 }",  # ... nor the way round that a small model finds
        'Err(format!(), "empty"))',  # one parenthesis too many
        "values.iter().sum(",
    ]
    for body in bad_bodies:
        assert problems(implementation_body=body), body
    assert problems(generic_params=[{"name": "u32", "trait_bounds": ["Copy"]}])
    assert problems(helper_functions=[{"name": "h", "code": "let x = 1;"}])
    assert problems(helper_functions=[{"name": "h", "code": "fn h() -> i32 { 1 }}"}])
    assert problems(helper_functions=[{"name": "h", "code": "pub(crate) fn h<T>(x: T) -> T { x }\n"}]) == []


def test_suggestions_outside_the_compiled_file_and_of_warnings_are_dropped() -> None:
    from tritonlm.providers.rust.rustc import SuggestedEdit, _parse_diagnostics

    def span(file_name: str, start: int, end: int, text: str, applicability: str = "MachineApplicable") -> dict:
        return {
            "file_name": file_name,
            "byte_start": start,
            "byte_end": end,
            "suggested_replacement": text,
            "suggestion_applicability": applicability,
        }

    def diagnostic(level: str, *children: list[dict]) -> str:
        return json.dumps(
            {
                "level": level,
                "message": "m",
                "rendered": f"{level}: m\n",
                "children": [{"message": "help", "spans": list(c)} for c in children],
            }
        )

    stream = "\n".join(
        [
            diagnostic(
                "error",
                [span("lib.rs", 0, 0, "use a;\n")],
                [span("/rustc/core/option.rs", 5, 9, "x")],
                [span("lib.rs", 3, 4, "y"), span("/rustc/core/option.rs", 1, 2, "z")],
                [span("lib.rs", 7, 8, "w", "HasPlaceholders")],
            ),
            diagnostic("warning", [span("lib.rs", 1, 2, "_x")]),
            "not json at all",
        ]
    )
    rendered, suggestions = _parse_diagnostics(stream, "lib.rs")
    assert suggestions == ((SuggestedEdit(0, 0, "use a;\n"),),)
    # the error's notes about option.rs are dropped (it is re-rendered without them), and a
    # line that is not a diagnostic is left out: only text about lib.rs reaches a prompt
    assert rendered == "error: m\n    = note: help\n    = note: help\n\nwarning: m\n"


@pytest.mark.skipif(shutil.which("rustc") is None, reason="rustc not installed")
def test_a_failing_provider_cancels_the_other_candidates_of_its_round() -> None:
    from tritonlm.providers import ProviderError

    class OneFailsOthersHang(ScriptedProvider):
        def __init__(self) -> None:
            super().__init__()
            self.cancelled = 0

        async def generate_structured(self, prompt: str, schema: dict, **kw: object) -> dict:
            self.calls.append(object())  # type: ignore[arg-type]
            if len(self.calls) == 1:
                await asyncio.sleep(0.05)
                raise ProviderError("the server went away")
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            raise AssertionError("not cancelled")

    provider = OneFailsOthersHang()

    async def generate_then_settle() -> None:
        with pytest.raises(ProviderError, match="went away"):
            await RustGenerator(ProviderAdapter(provider), candidates=3).generate(MAX_SPEC)
        await asyncio.sleep(0.05)
        assert provider.cancelled == 2  # inside the loop: asyncio.run cancels leftovers on exit

    run(generate_then_settle())
