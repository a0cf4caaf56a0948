"""Constrained generation on the real default model: 50 generations over 10 realistic schemas."""

from __future__ import annotations

import json

import pytest

from tests.constraints.support.schemas import SCHEMAS

pytestmark = pytest.mark.slow
jsonschema = pytest.importorskip("jsonschema")


def _prompt(case) -> list[dict[str, str]]:
    example = json.dumps(case.examples[0])
    return [
        {"role": "system", "content": "You answer with one JSON value and nothing else."},
        {
            "role": "user",
            "content": f"Give a new, different {case.name.replace('_', ' ')} as JSON, like this one: {example}",
        },
    ]


def _generate_and_validate(loaded, cases_to_run):
    from tritonlm.runtime.llm import LLM
    from tritonlm.runtime.sampling_params import SamplingParams

    llm = LLM.from_loaded(loaded, max_num_seqs=50, max_num_batched_tokens=2048)
    try:
        prompts, params, cases = [], [], []
        for case in cases_to_run:
            for k in range(5):
                prompts.append(_prompt(case))
                params.append(
                    SamplingParams(json_schema=case.schema, max_tokens=1024, temperature=0.7 if k else 0.0, seed=k)
                )
                cases.append(case)
        outputs = llm.generate(prompts, params)
    finally:
        llm.close()
    failures = []
    for case, out in zip(cases, outputs, strict=True):
        completion = out.outputs[0]
        try:
            jsonschema.validate(
                json.loads(completion.text), case.schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
        except Exception as exc:  # collect them all, then fail with the list
            failures.append((case.name, completion.finish_reason, completion.text[:200], repr(exc)[:200]))
    return failures


def test_generations_over_ten_schemas_all_validate(shipped_model):
    """5 generations (greedy and sampled) per schema. The recursive "tree" schema bounds neither
    depth nor breadth; its outputs validate because constrained outputs close within max_tokens."""
    assert len(SCHEMAS) == 10
    failures = _generate_and_validate(shipped_model, SCHEMAS)
    assert not failures, failures
