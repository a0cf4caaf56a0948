"""Constrained vs free generation on the default model (bfloat16), measured in one run.

Run: ``make bench PYTEST_ARGS="benches/bench_constraints_runtime.py -s"``.
Gates: constrained decode tokens/s >= 0.9x unconstrained; on a schema with long forced runs,
jump-forward makes constrained generation faster than unconstrained.
"""

from __future__ import annotations

import json

import pytest

from tests.constraints.support.schemas import SCHEMAS

FORCED_SCHEMA = {
    "type": "object",
    "properties": {
        "license_identifier_of_the_generated_module": {"const": "Apache-2.0 WITH LLVM-exception"},
        "programming_language_of_the_implementation": {"enum": ["python"]},
        "function_signature_as_written_in_the_source": {"const": "def add_numbers(first: int, second: int) -> int"},
        "is_pure_function": {"type": "boolean"},
        "expected_complexity_in_big_o_notation": {"enum": ["O(1)"]},
    },
    "required": [
        "license_identifier_of_the_generated_module",
        "programming_language_of_the_implementation",
        "function_signature_as_written_in_the_source",
        "is_pure_function",
        "expected_complexity_in_big_o_notation",
    ],
    "additionalProperties": False,
}
PROMPT = [{"role": "user", "content": "Describe a Python function that adds two numbers, as JSON."}]


def _rate(llm, params) -> tuple[float, int, str]:
    out = llm.generate([PROMPT], params)[0]
    usage = out.usage
    # completion tokens over the time after the prompt's prefill (time to first token excluded)
    decode_time = usage.total_time_s - (usage.time_to_first_token_s or 0.0)
    return (usage.completion_tokens - 1) / decode_time, usage.completion_tokens, out.outputs[0].text


@pytest.fixture(scope="module")
def llm(default_model_bf16):
    from tritonlm.runtime.llm import LLM

    engine = LLM.from_loaded(default_model_bf16, max_num_seqs=8)
    yield engine
    engine.close()


def test_constrained_vs_unconstrained_tokens_per_s(benchmark, llm):
    from tritonlm.runtime.sampling_params import SamplingParams

    schemas = [c.schema for c in SCHEMAS[:4]]
    free_rates, constrained_rates = [], []

    def run() -> None:
        for schema in schemas:  # interleave, so drifting machine load hits both alike
            rate, _, _ = _rate(llm, SamplingParams(temperature=0, max_tokens=96, ignore_eos=True))
            free_rates.append(rate)
            rate, _, text = _rate(llm, SamplingParams(temperature=0, max_tokens=400, json_schema=schema))
            json.loads(text)
            constrained_rates.append(rate)

    benchmark.pedantic(run, rounds=1, iterations=1)
    free = sorted(free_rates)[len(free_rates) // 2]
    constrained = sorted(constrained_rates)[len(constrained_rates) // 2]
    ratio = constrained / free
    benchmark.extra_info.update(free_tok_per_s=free, constrained_tok_per_s=constrained, ratio=ratio)
    print(f"\nfree {free:.2f} tok/s, constrained {constrained:.2f} tok/s (median of {len(schemas)}), ratio {ratio:.2f}")
    assert ratio >= 0.9


def test_jump_forward_beats_unconstrained_on_forced_runs(benchmark, llm):
    from tritonlm.runtime.sampling_params import SamplingParams

    results = {}

    def run() -> None:
        results["free"] = [
            _rate(llm, SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))[0] for _ in range(2)
        ]
        results["forced"] = [
            _rate(llm, SamplingParams(temperature=0, max_tokens=200, json_schema=FORCED_SCHEMA)) for _ in range(2)
        ]

    benchmark.pedantic(run, rounds=1, iterations=1)
    free = max(results["free"])
    forced = max(r[0] for r in results["forced"])
    json.loads(results["forced"][0][2])
    benchmark.extra_info.update(free_tok_per_s=free, jump_forward_tok_per_s=forced, ratio=forced / free)
    print(
        f"\nfree {free:.2f} tok/s, constrained with jump-forward {forced:.2f} tok/s "
        f"({results['forced'][0][1]} tokens), ratio {forced / free:.2f}"
    )
    assert forced > free
