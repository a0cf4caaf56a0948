"""DSPy acceptance on the real default model (slow; kept lean: short outputs, batched calls)."""

from __future__ import annotations

import json
from typing import Any

import pytest

dspy = pytest.importorskip("dspy")

from benches.bench_dspy import (  # noqa: E402
    Profile,
    calculator,
    lookup_price,
    react_question,
    workload,
)
from tests.dspy_adapter.support.engines import OutputRecorder  # noqa: E402
from tritonlm import dspy_adapter  # noqa: E402
from tritonlm.runtime.llm import LLM  # noqa: E402

pytestmark = pytest.mark.slow

MAX_STRING_LENGTH = 200


@pytest.fixture(scope="module")
def llm(shipped_model):
    llm = LLM.from_loaded(shipped_model, max_num_seqs=32)
    yield llm
    llm.close()


@pytest.fixture
def lm(llm):
    return dspy_adapter.lm(llm, cache=False, max_tokens=160)


@pytest.fixture
def adapter():
    return dspy_adapter.ConstrainedJSONAdapter(max_string_length=MAX_STRING_LENGTH)


def test_mixed_signatures_all_parse(lm, adapter):
    # every fifth call of the bench's 60: Predict, ChainOfThought and the typed Profile
    calls = workload()[::5]
    parallel = dspy.Parallel(num_threads=len(calls), max_errors=0)
    with dspy.context(lm=lm, adapter=adapter):
        results = parallel([(module, dspy.Example(**inputs).with_inputs(*inputs)) for _, module, inputs in calls])
    assert len(results) == len(calls)
    for (kind, _, _), pred in zip(calls, results, strict=True):
        if kind == "typed":
            assert isinstance(pred.age, int) and isinstance(pred.is_student, bool)
            assert pred.sentiment in ("positive", "neutral", "negative") and isinstance(pred.hobbies, list)
            assert pred.address.city and pred.address.country
        elif kind == "ChainOfThought":
            assert isinstance(pred.answer, int)
        else:
            assert isinstance(pred.answer, str)
    assert Profile.output_fields.keys() >= {"age", "address"}


def _react_steps(lm: Any) -> list[dict[str, Any]]:
    return [json.loads(h["outputs"][0]) for h in lm.history if "next_tool_name" in h["messages"][0]["content"]]


@pytest.fixture(scope="module")
def react_run(llm):
    lm = dspy_adapter.lm(llm, cache=False, max_tokens=160)
    react = dspy_adapter.ReAct("question -> answer: int", tools=[calculator, lookup_price], max_iters=6)
    with dspy.context(lm=lm, adapter=dspy_adapter.ConstrainedJSONAdapter(max_string_length=MAX_STRING_LENGTH)):
        pred = react(question=react_question(7, "widget"))
    return pred, _react_steps(lm)


def test_react_every_step_is_a_valid_tool_call(react_run):
    _, steps = react_run
    assert steps
    for step in steps:
        assert step["next_tool_name"] in ("calculator", "lookup_price", "finish")
        expected = {"calculator": {"expression"}, "lookup_price": {"item"}, "finish": set()}[step["next_tool_name"]]
        assert set(step["next_tool_args"]) == expected


def test_react_uses_both_tools_and_finishes(react_run):
    """Both tools are called and the loop ends with finish. Left alone, the 0.5B model repeats
    lookup_price until max_iters; ReAct leaves a just-repeated tool out of the next step.

    Whether the final answer is right is not asserted here: it is the 0.5B model's choice, not a
    guarantee of the engine (on this prompt the first token of the calculator expression is "1"
    of "12" at logprob -1.36 against "7" of "7 * 12" at -1.61), so the DSPy bench reports it as
    a rate over several questions."""
    _, steps = react_run
    names = [step["next_tool_name"] for step in steps]
    assert {"calculator", "lookup_price"} <= set(names), steps
    assert names[-1] == "finish", steps


def test_track_usage_equals_tokenizer_counts(lm, adapter, llm):
    tokenizer = llm.tokenizer
    with dspy.context(lm=lm, adapter=adapter, track_usage=True), OutputRecorder(llm) as recorder:
        pred = dspy.Predict("question -> answer")(question="What is the capital of France?")
    [output] = recorder.outputs
    usage = pred.get_lm_usage()[lm.model]
    prompt_ids = tokenizer.encode(tokenizer.apply_chat_template(lm.history[-1]["messages"], add_generation_prompt=True))
    assert usage["prompt_tokens"] == len(prompt_ids)
    assert usage["completion_tokens"] == len(output.outputs[0].token_ids) == output.usage.completion_tokens


def test_bootstrap_few_shot_compiles_and_hits_prefix_cache(lm, adapter, llm):
    trainset = [
        dspy.Example(question=f"What is {i} plus {i}?", answer=str(2 * i)).with_inputs("question") for i in range(10)
    ]

    def metric(example: Any, pred: Any, trace: Any = None) -> bool:
        return example.answer in str(pred.answer)

    optimizer = dspy.BootstrapFewShot(metric=metric, max_bootstrapped_demos=2, max_labeled_demos=2)
    with dspy.context(lm=lm, adapter=adapter):
        compiled = optimizer.compile(dspy.Predict("question -> answer"), trainset=trainset)
        assert compiled.demos
        block_manager = llm.engine.block_manager
        compiled(question="What is 20 plus 20?")
        before = block_manager.num_cache_hit_blocks
        compiled(question="What is 31 plus 31?")
        hits = block_manager.num_cache_hit_blocks - before
    # the system prompt and the demos (well over 10 blocks of 16 tokens) come from the cache
    assert hits >= 10, hits
