"""tritonlm under DSPy: engine protocol, constrained Adapter, ReAct, batching, streaming.

A tiny random model with the real Qwen2.5 tokenizer: its text is noise, so every parse that
succeeds here succeeds because of the grammar, not because the model behaved.
"""

from __future__ import annotations

import asyncio
import enum
import json
import subprocess
import sys
import uuid
from typing import Any, Literal

import pytest

dspy = pytest.importorskip("dspy")

import jsonschema  # noqa: E402
import pydantic  # noqa: E402
from dspy.lm15 import Config, Message, Request, TextPart  # noqa: E402
from dspy.utils.exceptions import AdapterParseError  # noqa: E402

from tests.dspy_adapter.support.engines import OutputRecorder, UnconstrainedTritonEngine, scripted_lm  # noqa: E402
from tests.server.support import tiny_llm  # noqa: E402
from tritonlm import dspy_adapter  # noqa: E402
from tritonlm.dspy_adapter import ConstrainedJSONAdapter, StreamListener, TritonEngine  # noqa: E402
from tritonlm.errors import SchemaError  # noqa: E402

# random weights rarely close a string and, greedy, repeat list items forever: bound both
MAX_STRING = 12
MAX_ITEMS = 4


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Person(pydantic.BaseModel):
    name: str
    age: int
    pets: list[str]


class TypedAnswer(dspy.Signature):
    """Answer with typed fields."""

    question: str = dspy.InputField(desc="what is asked")
    count: int = dspy.OutputField(desc="a number")
    flag: bool = dspy.OutputField()
    label: Literal["yes", "no", "maybe"] = dspy.OutputField()
    color: Color = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    person: Person = dspy.OutputField()
    note: str | None = dspy.OutputField(default=None)


@pytest.fixture(scope="module")
def llm(qwen_tokenizer):
    llm = tiny_llm(qwen_tokenizer)
    yield llm
    llm.close()


@pytest.fixture
def lm(llm):
    return dspy_adapter.lm(llm, cache=False, max_tokens=256)


@pytest.fixture
def adapter():
    return ConstrainedJSONAdapter(max_string_length=MAX_STRING, max_items=MAX_ITEMS)


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def _request(lm: Any, text: str, **config: Any) -> Request:
    return Request(model=lm.model, messages=(Message.user([TextPart(text)]),), config=Config(**config))


# ---- packaging ---------------------------------------------------------------------------------


def test_import_tritonlm_without_dspy():
    code = (
        "import sys\n"
        "sys.modules['dspy'] = None\n"
        "import tritonlm, tritonlm.runtime, tritonlm.runtime.llm, tritonlm.dspy_adapter\n"
        "import tritonlm.prediction\n"
        "assert sys.modules['dspy'] is None\n"
        "try:\n"
        "    tritonlm.dspy_adapter.ConstrainedJSONAdapter\n"
        "except ImportError:\n"
        "    print('lazy-ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "lazy-ok" in done.stdout


# ---- engine protocol ---------------------------------------------------------------------------


def test_lm_is_a_dspy_lm_with_capabilities(lm):
    assert isinstance(lm, dspy.LM)
    assert lm.supports_response_schema
    assert {"temperature", "max_tokens", "top_p", "stop", "seed", "response_format"} <= lm.supported_params


def test_complete_reports_exact_usage(lm, llm, qwen_tokenizer):
    messages = [{"role": "user", "content": "count my tokens"}]
    response = lm(
        Request(
            model=lm.model,
            messages=(Message.user([TextPart("count my tokens")]),),
            config=Config(max_tokens=7, temperature=0.0),
        )
    )
    prompt_ids = qwen_tokenizer.encode(qwen_tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    assert response.usage.input_tokens == len(prompt_ids)
    assert 1 <= response.usage.output_tokens <= 7
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_max_tokens_stop_and_seed(lm):
    engine = lm.engine
    out = engine.complete(_request(lm, unique("a"), max_tokens=4, temperature=0.0))
    assert out.finish_reason in ("length", "stop") and out.usage.output_tokens <= 4
    sampled = [
        engine.complete(_request(lm, "same", max_tokens=8, temperature=1.0, seed=11)).message.text for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    other = engine.complete(_request(lm, "same", max_tokens=8, temperature=1.0, seed=12)).message.text
    assert other != sampled[0]
    full = engine.complete(_request(lm, "stop test", max_tokens=24, temperature=0.0)).message.text
    assert len(full) > 2
    stop = full[1:3]
    cut = engine.complete(_request(lm, "stop test", max_tokens=24, temperature=0.0, stop=(stop,))).message.text
    assert cut == full[: full.index(stop)]


def test_top_p_tiny_is_greedy(lm):
    engine = lm.engine
    greedy = engine.complete(_request(lm, "p", max_tokens=6, temperature=0.0)).message.text
    nucleus = engine.complete(_request(lm, "p", max_tokens=6, temperature=1.0, top_p=1e-6, seed=3)).message.text
    assert nucleus == greedy


def test_response_formats(lm):
    schema = {
        "type": "object",
        "properties": {"x": {"type": "integer"}, "y": {"enum": ["a", "b"]}},
        "required": ["x", "y"],
        "additionalProperties": False,
    }
    text = lm.engine.complete(
        _request(
            lm, "json please", max_tokens=40, temperature=0.0, response_format={"type": "json_schema", "schema": schema}
        )
    ).message.text
    jsonschema.validate(json.loads(text), schema)
    # through dspy.LM's OpenAI-style keyword, the path adapters use
    [text] = lm(
        messages=[{"role": "user", "content": "json"}],
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    jsonschema.validate(json.loads(text), schema)
    # json_object: any object. Random weights rarely close a key, so only a finished one must parse.
    response = lm.engine.complete(
        _request(lm, "obj", max_tokens=24, temperature=0.0, response_format={"type": "json_object"})
    )
    assert response.message.text.startswith("{")
    if response.finish_reason == "stop":
        assert isinstance(json.loads(response.message.text), dict)


def test_dspy_cache_on_and_off(llm):
    question = unique("cache me")
    cached = dspy_adapter.lm(llm, cache=True, max_tokens=5)
    first = cached(question)
    before = cached.engine.num_requests
    assert cached(question) == first
    assert cached.engine.num_requests == before
    uncached = dspy_adapter.lm(llm, cache=False, max_tokens=5)
    uncached(question)
    uncached(question)
    assert uncached.engine.num_requests == 2


def test_async_engine_complete(lm):
    async def run() -> list[str]:
        return await asyncio.gather(*(lm.acall(unique("async"), max_tokens=4) for _ in range(3)))

    results = asyncio.run(run())
    assert len(results) == 3 and all(isinstance(r, list) and isinstance(r[0], str) for r in results)


def test_engine_refuses_what_it_cannot_do(lm):
    from dspy.lm15 import UnsupportedFeatureError

    with pytest.raises(UnsupportedFeatureError):
        lm.engine.complete(_request(lm, "x", max_tokens=2, logprobs=3))


# ---- the Adapter -------------------------------------------------------------------------------


def test_typed_signature_always_parses(lm, adapter, llm):
    predict = dspy.Predict(TypedAnswer)
    examples = [dspy.Example(question=unique("q")).with_inputs("question") for _ in range(4)]
    with dspy.context(lm=lm, adapter=adapter):
        results = predict.batch(examples, num_threads=4, max_errors=0)
    assert len(results) == 4
    for pred in results:
        assert isinstance(pred.count, int) and isinstance(pred.flag, bool)
        assert pred.label in ("yes", "no", "maybe") and isinstance(pred.color, Color)
        assert isinstance(pred.tags, list) and len(pred.tags) <= MAX_ITEMS
        assert all(isinstance(t, str) and len(t) <= MAX_STRING for t in pred.tags)
        assert isinstance(pred.person, Person)
        assert pred.note is None or isinstance(pred.note, str)


def test_chain_of_thought_and_scalar_types_parse(lm, adapter):
    class Scalars(dspy.Signature):
        text: str = dspy.InputField()
        score: float = dspy.OutputField()
        ratio: dict[str, int] = dspy.OutputField()
        maybe_items: list[int] | None = dspy.OutputField()

    with dspy.context(lm=lm, adapter=adapter):
        pred = dspy.ChainOfThought("question -> answer: int").batch(
            [dspy.Example(question=unique("cot")).with_inputs("question") for _ in range(2)], max_errors=0
        )
        assert all(isinstance(p.answer, int) and isinstance(p.reasoning, str) for p in pred)
    schema = dspy_adapter.signature_json_schema(Scalars)
    assert schema["properties"]["ratio"]["additionalProperties"]["type"] == "integer"
    assert {"type": "null"} in schema["properties"]["maybe_items"]["anyOf"]


def test_unsupported_type_is_schema_error_naming_field(lm, adapter):
    class WithImage(dspy.Signature):
        question: str = dspy.InputField()
        picture: dspy.Image = dspy.OutputField()

    class WithObject(dspy.Signature):
        question: str = dspy.InputField()
        fine: int = dspy.OutputField()
        handle: type = dspy.OutputField()

    before = lm.engine.num_requests
    with dspy.context(lm=lm, adapter=adapter):
        with pytest.raises(SchemaError, match="picture"):
            dspy.Predict(WithImage)(question="x")
        with pytest.raises(SchemaError, match="handle"):
            dspy.Predict(WithObject)(question="x")
    assert lm.engine.num_requests == before


def test_unconstrained_lm_falls_back_to_repair_then_parse_error(llm, adapter):
    raw_lm = dspy.LM(
        "tritonlm/unconstrained",
        engine=UnconstrainedTritonEngine(llm),
        cache=False,
        num_retries=0,
        max_tokens=20,
        temperature=0.0,
    )
    with dspy.context(lm=raw_lm, adapter=adapter):
        with pytest.raises(AdapterParseError) as caught:
            dspy.Predict(TypedAnswer)(question=unique("noise"))
    raw = raw_lm.history[-1]["outputs"][0]
    assert caught.value.lm_response == raw
    assert "response_format" not in raw_lm.history[-1]["kwargs"]


def test_repair_path_on_scripted_text():
    scripted, _ = scripted_lm(['Sure! ```json\n{"answer": 42, "ok": true,}\n``` done'])
    with dspy.context(lm=scripted, adapter=ConstrainedJSONAdapter()):
        pred = dspy.Predict("question -> answer: int, ok: bool")(question="q")
    assert pred.answer == 42 and pred.ok is True


def test_empty_output_is_adapter_parse_error():
    scripted, _ = scripted_lm([""])
    with dspy.context(lm=scripted, adapter=ConstrainedJSONAdapter()):
        with pytest.raises(AdapterParseError):
            dspy.Predict("question -> answer")(question="q")


def test_optional_output_field_default():
    class Sig(dspy.Signature):
        question: str = dspy.InputField()
        answer: str = dspy.OutputField()
        note: str | None = dspy.OutputField(default=None)
        score: int = dspy.OutputField(default=7)

    scripted, _ = scripted_lm(['{"answer": "hi"}'])
    with dspy.context(lm=scripted, adapter=ConstrainedJSONAdapter()):
        pred = dspy.Predict(Sig)(question="q")
    assert (pred.answer, pred.note, pred.score) == ("hi", None, 7)
    assert dspy_adapter.signature_json_schema(Sig)["required"] == ["answer"]


def test_demos_and_history_formatting():
    class Sig(dspy.Signature):
        """Reply briefly."""

        question: str = dspy.InputField(desc="the question")
        history: dspy.History = dspy.InputField()
        answer: int = dspy.OutputField(desc="the number")

    adapter = ConstrainedJSONAdapter()
    demos = [{"question": "one?", "answer": 1}, {"question": "two?", "answer": 2}]
    history = dspy.History(messages=[{"question": "zero?", "answer": 0}])
    messages = adapter.format(Sig, demos, {"question": "three?", "history": history})
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert "Reply briefly." in system and "the question" in system and "the number" in system
    assert "answer" in system and "int" in system
    assert json.loads(messages[2]["content"]) == {"answer": 1}
    assert json.loads(messages[4]["content"]) == {"answer": 2}
    assert "zero?" in messages[5]["content"] and json.loads(messages[6]["content"]) == {"answer": 0}
    assert "three?" in messages[-1]["content"]
    # DSPy's stock JSONAdapter formats the same prompt
    assert messages == dspy.JSONAdapter().format(Sig, demos, {"question": "three?", "history": history})


# ---- concurrency and n ---------------------------------------------------------------------------


def test_batch_parallel_and_acall_share_engine_batches(lm, adapter, llm):
    predict = dspy.Predict("question -> answer: int")
    examples = [dspy.Example(question=unique("b")).with_inputs("question") for _ in range(6)]
    with dspy.context(lm=lm, adapter=adapter):
        llm.stats.batch_sizes.clear()
        assert len(predict.batch(examples, num_threads=6, max_errors=0)) == 6
        batch_peak = max(llm.stats.batch_sizes)

        llm.stats.batch_sizes.clear()
        parallel = dspy.Parallel(num_threads=6, max_errors=0)
        assert len(parallel([(predict, ex) for ex in examples])) == 6
        parallel_peak = max(llm.stats.batch_sizes)

        async def run() -> list[Any]:
            return await asyncio.gather(*(predict.acall(question=ex.question) for ex in examples))

        llm.stats.batch_sizes.clear()
        assert len(asyncio.run(run())) == 6
        async_peak = max(llm.stats.batch_sizes)
    assert batch_peak >= 4 and parallel_peak >= 4 and async_peak >= 4, (batch_peak, parallel_peak, async_peak)


def test_n_samples_are_one_request(lm, adapter, llm):
    predict = dspy.Predict("question -> answer: int")
    with dspy.context(lm=lm, adapter=adapter), OutputRecorder(llm) as recorder:
        before = lm.engine.num_requests
        pred = predict(question=unique("n"), config={"n": 3, "temperature": 1.0})
    assert lm.engine.num_requests - before == 1
    assert len(recorder.outputs) == 1 and len(recorder.outputs[0].outputs) == 3
    assert len(pred.completions) == 3 and all(isinstance(a, int) for a in pred.completions.answer)
    usage = lm.history[-1]["usage"]
    output = recorder.outputs[0]
    assert usage["prompt_tokens"] == output.usage.prompt_tokens
    assert usage["completion_tokens"] == output.usage.completion_tokens


def test_track_usage_matches_engine(lm, adapter, llm, qwen_tokenizer):
    with dspy.context(lm=lm, adapter=adapter, track_usage=True), OutputRecorder(llm) as recorder:
        pred = dspy.Predict("question -> answer: int")(question=unique("usage"))
    [output] = recorder.outputs
    usage = pred.get_lm_usage()[lm.model]
    messages = lm.history[-1]["messages"]
    prompt_ids = qwen_tokenizer.encode(qwen_tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    assert usage["prompt_tokens"] == len(prompt_ids) == output.usage.prompt_tokens
    assert usage["completion_tokens"] == len(output.outputs[0].token_ids) == output.usage.completion_tokens


# ---- ReAct ---------------------------------------------------------------------------------------


def test_react_steps_are_valid_tool_calls(lm, adapter):
    calls: list[tuple[str, dict[str, Any]]] = []

    def add(a: int, b: int) -> int:
        """Add two integers."""
        calls.append(("add", {"a": a, "b": b}))
        return a + b

    def lookup(key: str) -> str:
        """Look a key up in the table."""
        calls.append(("lookup", {"key": key}))
        return {"x": "1"}.get(key, "missing")

    react = dspy_adapter.ReAct("question -> answer: str", tools=[add, lookup], max_iters=3)
    step_schema = dspy_adapter.signature_json_schema(react.react.signature)
    assert len(step_schema["anyOf"]) == 3  # add, lookup, finish
    with dspy.context(lm=lm, adapter=adapter):
        react(question=unique("react"))
    steps = [h for h in lm.history if "next_tool_name" in h["messages"][0]["content"]]
    assert steps
    for entry in steps:
        step = json.loads(entry["outputs"][0])
        jsonschema.validate(step, step_schema)
        assert step["next_tool_name"] in ("add", "lookup", "finish")
    for name, args in calls:
        assert set(args) == ({"a", "b"} if name == "add" else {"key"})


def test_repeated_tools_names_the_tool_whose_latest_call_repeats() -> None:
    from tritonlm.dspy_adapter.react import repeated_tools

    def step(i: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
        return {f"thought_{i}": "", f"tool_name_{i}": name, f"tool_args_{i}": args, f"observation_{i}": ""}

    assert repeated_tools({}) == set()
    once = step(0, "lookup", {"key": "x"})
    assert repeated_tools(once) == set()
    assert repeated_tools({**once, **step(1, "lookup", {"key": "y"})}) == set()
    assert repeated_tools({**once, **step(1, "lookup", {"key": "x"})}) == {"lookup"}
    # a later different call clears it; finish is never left out
    assert repeated_tools({**once, **step(1, "lookup", {"key": "x"}), **step(2, "lookup", {"key": "z"})}) == set()
    assert repeated_tools({**step(0, "finish", {}), **step(1, "finish", {})}) == set()


def test_react_step_after_a_repeated_call_leaves_that_tool_out(adapter):
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    def lookup(key: str) -> str:
        """Look a key up in the table."""
        return "1"

    react = dspy_adapter.ReAct("question -> answer: str", tools=[add, lookup], max_iters=3)
    repeat = {
        "tool_name_0": "lookup",
        "tool_args_0": {"key": "x"},
        "tool_name_1": "lookup",
        "tool_args_1": {"key": "x"},
    }

    def tool_names(signature: Any) -> set[str]:
        return {
            b["properties"]["next_tool_name"]["const"] for b in dspy_adapter.signature_json_schema(signature)["anyOf"]
        }

    assert tool_names(react._step_module(react.react, repeat).signature) == {"add", "finish"}
    # the shared predictor keeps every tool, and the extract step is never narrowed
    assert tool_names(react.react.signature) == {"add", "lookup", "finish"}
    assert react._step_module(react.extract, repeat) is react.extract


# ---- streaming -----------------------------------------------------------------------------------


def _stream(program: Any, listener: Any, **inputs: Any) -> tuple[list[Any], Any]:
    streaming = dspy.streamify(program, stream_listeners=[listener], async_streaming=False)
    chunks, final = [], None
    for item in streaming(**inputs):
        if isinstance(item, dspy.streaming.StreamResponse):
            chunks.append(item)
        elif isinstance(item, dspy.Prediction):
            final = item
    return chunks, final


def test_streamify_with_constrained_adapter(lm, adapter):
    with dspy.context(lm=lm, adapter=adapter):
        chunks, final = _stream(
            dspy.Predict("question -> answer"), StreamListener(signature_field_name="answer"), question=unique("stream")
        )
    assert final is not None and isinstance(final.answer, str)
    assert chunks and all(c.signature_field_name == "answer" for c in chunks)
    # dspy's JSON listeners stream the field's JSON text: here one string literal
    assert json.loads("".join(c.chunk for c in chunks)) == final.answer


def test_streamify_with_stock_chat_adapter():
    scripted, _ = scripted_lm(["[[ ## answer ## ]]\nstreamed words here\n\n[[ ## completed ## ]]"])
    with dspy.context(lm=scripted, adapter=dspy.ChatAdapter()):
        chunks, final = _stream(
            dspy.Predict("question -> answer"),
            dspy.streaming.StreamListener(signature_field_name="answer"),
            question="q",
        )
    assert final.answer == "streamed words here"
    assert len(chunks) > 1 and "".join(c.chunk for c in chunks).strip() == "streamed words here"


def test_streaming_engine_events(lm):
    from dspy.clients.engines.stream_guard import checked_stream

    events = list(checked_stream(lm.engine.stream(_request(lm, "events", max_tokens=6, temperature=0.0))))
    assert events[0].type == "start" and events[-1].type == "end"
    text = "".join(e.delta.text for e in events if e.type == "delta")
    assert text == lm.engine.complete(_request(lm, "events", max_tokens=6, temperature=0.0)).message.text
    assert events[-1].usage.output_tokens >= 1


def test_engine_is_shared_by_deepcopy(lm):
    import copy

    assert copy.deepcopy(lm.engine) is lm.engine
    assert isinstance(lm.engine, TritonEngine)


# ---- optimizers ----------------------------------------------------------------------------------


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_bootstrap_few_shot_demos_hit_prefix_cache(lm, adapter, llm, qwen_tokenizer):
    trainset = [dspy.Example(question=f"train question {i}", answer=str(i)).with_inputs("question") for i in range(10)]
    program = dspy.Predict("question -> answer")
    optimizer = dspy.BootstrapFewShot(
        metric=lambda example, pred, trace=None: True, max_bootstrapped_demos=2, max_labeled_demos=2
    )
    with dspy.context(lm=lm, adapter=adapter):
        compiled = optimizer.compile(program, trainset=trainset)
        demos = compiled.demos
        assert len(demos) == 2
        block_manager = llm.engine.block_manager
        with OutputRecorder(llm) as recorder:
            compiled(question=unique("first"))
            hits_before = block_manager.num_cache_hit_blocks
            compiled(question=unique("second"))
            hits = block_manager.num_cache_hit_blocks - hits_before
    first, second = (o.prompt_token_ids for o in recorder.outputs)
    shared = _common_prefix(first, second)
    shared_text = qwen_tokenizer.decode(first[:shared])
    assert all(demo["question"] in shared_text for demo in demos)
    block_size = llm.engine.config.block_size
    assert shared // block_size >= 8
    assert hits >= shared // block_size - 1, (hits, shared)


def test_streamify_async_program_uses_async_engine(lm, adapter):
    async def run() -> tuple[list[Any], Any]:
        program = dspy.streamify(
            dspy.Predict("question -> answer"),
            is_async_program=True,
            stream_listeners=[StreamListener(signature_field_name="answer")],
        )
        chunks, final = [], None
        async for item in program(question=unique("astream")):
            if isinstance(item, dspy.streaming.StreamResponse):
                chunks.append(item)
            elif isinstance(item, dspy.Prediction):
                final = item
        return chunks, final

    before = lm.engine.num_requests
    with dspy.context(lm=lm, adapter=adapter):
        chunks, final = asyncio.run(run())
    assert lm.engine.num_requests == before  # served by the async twin
    assert lm._async_engine_spec.num_requests >= 1
    assert chunks and json.loads("".join(c.chunk for c in chunks)) == final.answer
