"""The server on the real default model: DSPy through LiteLLM, and structured output."""

from __future__ import annotations

import json

import pytest

from tests.server.support import running_server

pytestmark = pytest.mark.slow
MODEL = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="module")
def default_server(shipped_model):
    from tritonlm.runtime.llm import LLM

    llm = LLM.from_loaded(shipped_model, max_num_seqs=16, max_model_len=4096)
    with running_server(llm, MODEL) as url:
        yield url
    llm.close()


def test_dspy_lm_runs_predict_through_the_server(default_server):
    dspy = pytest.importorskip("dspy")
    lm = dspy.LM(
        f"openai/{MODEL}",
        api_base=default_server + "/v1",
        api_key="unused",
        cache=False,
        temperature=0.0,
        max_tokens=200,
    )
    with dspy.context(lm=lm):
        result = dspy.Predict("question -> answer")(question="What is the capital of France?")
    assert isinstance(result.answer, str) and result.answer.strip()
    assert "paris" in result.answer.lower()


def test_openai_structured_output_on_the_default_model(default_server):
    openai = pytest.importorskip("openai")
    jsonschema = pytest.importorskip("jsonschema")
    schema = {
        "type": "object",
        "properties": {
            "function_name": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$"},
            "arguments": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            "returns": {"enum": ["int", "str", "bool", "None"]},
        },
        "required": ["function_name", "arguments", "returns"],
        "additionalProperties": False,
    }
    client = openai.OpenAI(base_url=default_server + "/v1", api_key="unused", max_retries=0)
    resp = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a Python function that adds two integers, as JSON."}],
        max_tokens=120,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "fn", "schema": schema, "strict": True}},
    )
    data = json.loads(resp.choices[0].message.content)
    jsonschema.validate(data, schema)
