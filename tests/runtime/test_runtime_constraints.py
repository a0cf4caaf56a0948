"""The engine's grammar-mask stage: json_schema / regex / choice outputs obey their grammar,
also when sampled and next to unconstrained requests."""

from __future__ import annotations

import json
import re

import pytest

from tests.runtime.helpers import make_engine, random_prompts
from tritonlm.errors import SchemaError
from tritonlm.runtime.sampling_params import SamplingParams

pytest.importorskip("tritonlm.constraints")


def test_constrained_requests_obey_their_grammar_in_a_mixed_batch(qwen_tokenizer) -> None:
    engine = make_engine(qwen_tokenizer)
    prompts = random_prompts(6, seed=13)
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "kind": {"enum": ["a", "bb"]}},
        "required": ["ok", "kind"],
        "additionalProperties": False,
    }
    cases = {
        "choice": SamplingParams(temperature=0, max_tokens=20, choice=["yes", "no", "maybe"]),
        "choice_sampled": SamplingParams(temperature=1.0, seed=3, max_tokens=20, choice=["red", "green"]),
        "regex": SamplingParams(temperature=1.0, seed=4, max_tokens=30, regex=r"[0-9]{3}-[a-z]{2}"),
        "json": SamplingParams(temperature=0.7, seed=5, max_tokens=60, json_schema=schema),
        "free": SamplingParams(temperature=1.0, max_tokens=15, ignore_eos=True),
    }
    ids = {name: engine.add_request(prompts[i], params) for i, (name, params) in enumerate(cases.items())}
    outputs = engine.run_until_done()
    out = {name: outputs[rid].outputs[0] for name, rid in ids.items()}
    assert out["choice"].text in {"yes", "no", "maybe"} and out["choice"].finish_reason == "stop"
    assert out["choice_sampled"].text in {"red", "green"}
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", out["regex"].text), out["regex"].text
    value = json.loads(out["json"].text)
    assert set(value) == {"ok", "kind"} and isinstance(value["ok"], bool) and value["kind"] in ("a", "bb")
    assert len(out["free"].token_ids) == 15
    engine.check_block_accounting()


def test_a_bad_schema_fails_only_its_request(qwen_tokenizer) -> None:
    engine = make_engine(qwen_tokenizer)
    with pytest.raises(SchemaError):
        engine.add_request([1, 2, 3], SamplingParams(json_schema={"type": "no-such-type"}))
    rid = engine.add_request([1, 2, 3], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert len(engine.run_until_done()[rid].outputs[0].token_ids) == 3


def test_jump_forward_appends_forced_tokens_without_a_step_each(qwen_tokenizer) -> None:
    """Keys, punctuation and a const value are forced: they cost no decode step of their own."""
    schema = {
        "type": "object",
        "properties": {
            "description_of_the_function": {"const": "returns the sum of two integers, a and b"},
            "implementation_language": {"enum": ["python"]},
            "flag": {"type": "boolean"},
        },
        "required": ["description_of_the_function", "implementation_language", "flag"],
        "additionalProperties": False,
    }
    engine = make_engine(qwen_tokenizer)
    steps_before = engine.stats.num_steps
    rid = engine.add_request(
        random_prompts(1, seed=21)[0], SamplingParams(temperature=0, max_tokens=200, json_schema=schema)
    )
    out = engine.run_until_done()[rid].outputs[0]
    value = json.loads(out.text)
    assert value["description_of_the_function"] == "returns the sum of two integers, a and b"
    assert value["implementation_language"] == "python" and isinstance(value["flag"], bool)
    steps = engine.stats.num_steps - steps_before
    # only the first step, "true"/"false" and the end need the model to choose
    assert len(out.token_ids) >= 20 and steps <= 6, (steps, len(out.token_ids))
    engine.check_block_accounting()


def test_jump_forward_keeps_logprobs_aligned(qwen_tokenizer) -> None:
    engine = make_engine(qwen_tokenizer)
    rid = engine.add_request(
        random_prompts(1, seed=22)[0],
        SamplingParams(temperature=0, max_tokens=40, logprobs=1, json_schema={"const": {"key": "value"}}),
    )
    out = engine.run_until_done()[rid].outputs[0]
    assert json.loads(out.text) == {"key": "value"}
    assert len(out.logprobs) == len(out.token_ids)


TREE_SCHEMA = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["name"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/node",
}


@pytest.mark.parametrize("max_tokens", [12, 23, 40])
def test_unbounded_outputs_close_within_max_tokens(qwen_tokenizer, max_tokens) -> None:
    """A random model under a recursive schema rarely ends by itself; every output must still
    be complete, valid JSON within max_tokens, ending with EOS."""
    jsonschema = pytest.importorskip("jsonschema")
    engine = make_engine(qwen_tokenizer)
    prompts = random_prompts(6, seed=31)
    ids = [
        engine.add_request(p, SamplingParams(temperature=1.2, seed=k, max_tokens=max_tokens, json_schema=TREE_SCHEMA))
        for k, p in enumerate(prompts)
    ]
    outputs = engine.run_until_done()
    for rid in ids:
        out = outputs[rid].outputs[0]
        assert out.finish_reason == "stop", (out.finish_reason, out.text)
        assert len(out.token_ids) <= max_tokens
        jsonschema.validate(json.loads(out.text), TREE_SCHEMA)
    assert engine.stats.num_closed_early >= 1
    engine.check_block_accounting()
