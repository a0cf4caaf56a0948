"""The facade the edges use: the OpenAI-fields translator, the prompt classifier, and
LLM / AsyncLLM's max_model_len, tokenize, metrics and complete."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.runtime.helpers import tiny_model
from tritonlm.errors import ConfigError, ContextTooLongError, TokenizationError
from tritonlm.runtime.inputs import InputProcessor, prompt_kind, split_prompts
from tritonlm.runtime.llm import LLM, AsyncLLM
from tritonlm.runtime.metrics import EngineMetrics
from tritonlm.runtime.openai_params import (
    JSON_OBJECT_SCHEMA,
    MaxTokensTooLongError,
    RequestFieldError,
    sampling_params_from_openai,
)
from tritonlm.runtime.sampling_params import SamplingParams

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


# ---- the translator ----------------------------------------------------------------------------
def test_translator_maps_direct_fields_and_ignores_none_and_unknown_keys() -> None:
    fields = {
        "model": "m",
        "messages": [],
        "stream": False,
        "n": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "min_p": 0.1,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "repetition_penalty": 1.1,
        "seed": 7,
        "stop": "END",
        "stop_token_ids": [3],
        "ignore_eos": True,
        "max_tokens": 12,
        "response_format": None,
        "user": "someone",
    }
    params = sampling_params_from_openai(fields)
    assert params == SamplingParams(
        n=2,
        temperature=0.5,
        top_p=0.9,
        top_k=5,
        min_p=0.1,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.1,
        seed=7,
        stop=("END",),
        stop_token_ids=(3,),
        ignore_eos=True,
        max_tokens=12,
    )
    assert sampling_params_from_openai({"temperature": None, "seed": None}) == SamplingParams()


def test_translator_max_tokens_spellings_and_defaults() -> None:
    assert sampling_params_from_openai({}).max_tokens == 256
    assert sampling_params_from_openai({}, default_max_tokens=512).max_tokens == 512
    assert sampling_params_from_openai({"max_tokens": 9, "max_completion_tokens": 5}).max_tokens == 5
    assert sampling_params_from_openai({"max_tokens": 9, "max_completion_tokens": None}).max_tokens == 9
    with pytest.raises(MaxTokensTooLongError) as info:
        sampling_params_from_openai({"max_completion_tokens": 100}, max_model_len=100)
    assert info.value.param == "max_completion_tokens" and isinstance(info.value, ContextTooLongError)
    assert sampling_params_from_openai({"max_tokens": 99}, max_model_len=100).max_tokens == 99


def test_translator_logprobs_of_both_apis() -> None:
    assert sampling_params_from_openai({"logprobs": True, "top_logprobs": 3}).logprobs == 3
    assert sampling_params_from_openai({"logprobs": True}).logprobs == 0
    assert sampling_params_from_openai({"logprobs": False, "top_logprobs": 3}).logprobs is None
    assert sampling_params_from_openai({"logprobs": 4}).logprobs == 4
    assert sampling_params_from_openai({"logprobs": 0}).logprobs == 0
    assert sampling_params_from_openai({"logprobs": None}).logprobs is None


def test_translator_response_formats() -> None:
    def schema_of(fmt: object) -> object:
        return sampling_params_from_openai({"response_format": fmt}).json_schema

    assert schema_of({"type": "text"}) is None
    assert schema_of({"type": "json_object"}) == JSON_OBJECT_SCHEMA
    assert schema_of({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}) == SCHEMA
    assert schema_of({"type": "json_schema", "schema": SCHEMA}) == SCHEMA  # lm15's shape
    for bad in ({"type": "xml"}, {"type": "json_schema", "json_schema": {"name": "x"}}, "json"):
        with pytest.raises(RequestFieldError) as info:
            schema_of(bad)
        assert info.value.param == "response_format" and isinstance(info.value, ConfigError)


def test_translator_leaves_ranges_to_sampling_params_and_strict_rejects_unknown_keys() -> None:
    for fields in ({"temperature": -1}, {"top_p": 0}, {"n": 0}, {"logprobs": 21}, {"presence_penalty": 3}):
        with pytest.raises(ConfigError, match="SamplingParams"):
            sampling_params_from_openai(fields)
    with pytest.raises(RequestFieldError, match="bogus") as info:
        sampling_params_from_openai({"top_p": 0.5, "bogus": 1}, strict=True)
    assert info.value.param == "bogus"
    assert sampling_params_from_openai({"top_p": 0.5}, strict=True).top_p == 0.5


# ---- prompts -------------------------------------------------------------------------------------
def test_prompt_kind_and_split_prompts() -> None:
    chat = [{"role": "user", "content": "hi"}]
    assert prompt_kind("hi") == "text"
    assert prompt_kind(chat) == "chat"
    assert prompt_kind([1, 2]) == "token_ids"
    assert prompt_kind([]) == "token_ids"
    assert prompt_kind([True, 2]) is None
    assert prompt_kind(["a", "b"]) is None
    assert prompt_kind(b"hi") is None and prompt_kind(3) is None
    assert split_prompts("hi") == ["hi"]
    assert split_prompts(chat) == [chat]
    assert split_prompts([1, 2]) == [[1, 2]]
    assert split_prompts(["a", chat, [1]]) == ["a", chat, [1]]
    assert split_prompts([]) == []
    with pytest.raises(ConfigError):
        split_prompts(3)


def test_input_processor_errors(qwen_tokenizer) -> None:
    inputs = InputProcessor(qwen_tokenizer, 100)
    assert inputs.tokenize([1, 99]) == [1, 99]
    for bad in ([], "", [5, 100], [-1], 3.5, [[1]]):
        with pytest.raises(TokenizationError):
            inputs.tokenize(bad)  # type: ignore[arg-type]


# ---- LLM / AsyncLLM ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm(qwen_tokenizer):
    with LLM.from_loaded((tiny_model(), qwen_tokenizer), num_kv_blocks=64, max_model_len=200) as llm:
        yield llm


def test_llm_max_model_len_and_tokenize(llm, qwen_tokenizer) -> None:
    assert llm.max_model_len == 200
    chat = [{"role": "user", "content": "Write a haiku."}]
    templated = qwen_tokenizer.encode(qwen_tokenizer.apply_chat_template(chat, add_generation_prompt=True))
    assert llm.tokenize(chat) == templated
    assert llm.tokenize("plain") == qwen_tokenizer.encode("plain")
    assert llm.tokenize([5, 6]) == [5, 6]
    with pytest.raises(TokenizationError):
        llm.tokenize([10**9])
    (out,) = llm.generate([chat], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    assert out.prompt_token_ids == llm.tokenize(chat)


def test_llm_metrics_count_steps_and_free_blocks(llm) -> None:
    before = llm.metrics()
    assert isinstance(before, EngineMetrics)
    assert before.num_kv_blocks == 64 and before.max_model_len == 200
    llm.generate([[1, 2, 3], [4, 5, 6, 7]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    after = llm.metrics()
    assert after.num_steps >= before.num_steps + 4
    assert after.last_batch_size == 2
    assert after.num_requests_running == after.num_requests_waiting == 0
    assert after.num_kv_blocks_used == 0
    with pytest.raises(AttributeError):
        after.num_steps = 0  # type: ignore[misc]


def test_async_llm_complete_and_facade(llm) -> None:
    async_llm = AsyncLLM.from_llm(llm)
    assert async_llm.max_model_len == 200 and async_llm.tokenize([7]) == [7]
    assert async_llm.metrics().num_kv_blocks == 64
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)

    async def run() -> tuple:
        return await asyncio.gather(async_llm.complete([1, 2, 3], params), async_llm.complete(list(range(300)), params))

    good, bad = asyncio.run(run())
    assert good.error is None and len(good.outputs[0].token_ids) == 5
    assert good.outputs[0].token_ids == llm.generate([[1, 2, 3]], params)[0].outputs[0].token_ids
    assert isinstance(bad.error, ContextTooLongError)


def test_cancelling_complete_aborts_the_request(llm) -> None:
    async_llm = AsyncLLM.from_llm(llm)

    async def run() -> None:
        task = asyncio.create_task(
            async_llm.complete([1, 2, 3], SamplingParams(temperature=0, max_tokens=190, ignore_eos=True))
        )
        await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    for _ in range(200):
        if not llm.engine.has_unfinished_requests:
            break
        time.sleep(0.05)
    llm.engine.check_block_accounting()
