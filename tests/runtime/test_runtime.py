"""Engine on tiny random models (float32, 14 q heads / 2 kv heads, the real 151,936 vocab):
batch invariance against each prompt alone and the contiguous cache, preemption, chunked
prefill, prefix caching, n > 1, stops, logprobs, per-request errors, aborts."""

from __future__ import annotations

import random

import pytest
import torch

from tests.model.simple import ContiguousSequence
from tests.runtime.helpers import make_engine, random_prompts, reference_greedy, tiny_model
from tritonlm.errors import ContextTooLongError, InferenceError, TokenizationError
from tritonlm.model.config import Qwen2Config
from tritonlm.model.qwen2 import Qwen2ForCausalLM
from tritonlm.runtime.request import RequestStatus
from tritonlm.runtime.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = random.Random(1)
    return [[rng.randrange(100, 100_000) for _ in range(n)] for n in (3, 17, 70, 31, 5, 48, 16, 59)]


@pytest.fixture(scope="module")
def references(prompts: list[list[int]]) -> list[list[int]]:
    model = tiny_model()
    return [reference_greedy(model, p, GREEDY.max_tokens) for p in prompts]


def _run_batch(engine, prompts, params=GREEDY) -> list[list[int]]:
    ids = [engine.add_request(p, params) for p in prompts]
    outputs = engine.run_until_done()
    engine.check_block_accounting()
    return [outputs[i].outputs[0].token_ids for i in ids]


def test_batch_invariance_paged_vs_alone_vs_contiguous(qwen_tokenizer, prompts, references) -> None:
    assert len({len(p) for p in prompts}) == 8 and any(len(p) % 16 for p in prompts)
    batched = _run_batch(make_engine(qwen_tokenizer, block_size=16), prompts)
    alone = [_run_batch(make_engine(qwen_tokenizer, block_size=16), [p])[0] for p in prompts]
    assert batched == alone
    assert batched == references
    # the contiguous layout through the engine: one block per sequence covering the context
    contiguous = _run_batch(make_engine(qwen_tokenizer, block_size=128, num_kv_blocks=8, max_model_len=128), prompts)
    assert contiguous == references


def test_preemption_with_a_cache_too_small_for_all(qwen_tokenizer, prompts, references) -> None:
    engine = make_engine(qwen_tokenizer, block_size=16, num_kv_blocks=12, max_model_len=128)
    assert _run_batch(engine, prompts) == references
    assert engine.scheduler.num_preemptions > 0


def test_chunked_prefill_with_a_small_token_budget(qwen_tokenizer, prompts, references) -> None:
    engine = make_engine(qwen_tokenizer, block_size=16, max_num_batched_tokens=7)
    prepare = engine.runner.prepare
    mixed_steps = []

    def spy(batch):
        prepared = prepare(batch)
        attn = prepared[2]
        if attn.num_decode_seqs and attn.max_query_len > 1:
            mixed_steps.append(attn.num_decode_seqs)
        return prepared

    engine.runner.prepare = spy
    assert _run_batch(engine, prompts) == references
    assert max(engine.stats.batch_tokens) <= 7
    assert mixed_steps, "decodes and prefill chunks were meant to share steps"


def test_prefix_cache_reuse_gives_the_same_tokens(qwen_tokenizer) -> None:
    model = tiny_model()
    shared = random_prompts(1, lo=40, hi=41, seed=7)[0]
    first, second = [*shared, 11, 12, 13], [*shared, 21, 22]
    engine = make_engine(qwen_tokenizer, block_size=16)
    id1 = engine.add_request(first, GREEDY)
    out1 = engine.run_until_done()[id1]
    id2 = engine.add_request(second, GREEDY)
    out2 = engine.run_until_done()[id2]
    assert out1.usage.cached_prompt_tokens == 0
    assert out2.usage.cached_prompt_tokens == 32  # two full blocks of the 40 shared tokens
    assert out1.outputs[0].token_ids == reference_greedy(model, first, 24)
    assert out2.outputs[0].token_ids == reference_greedy(model, second, 24)
    engine.check_block_accounting()


def test_n_completions_share_the_prompt_blocks(qwen_tokenizer) -> None:
    prompt = random_prompts(1, lo=37, hi=38, seed=3)[0]
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=42, ignore_eos=True)
    engine = make_engine(qwen_tokenizer, block_size=16)
    rid = engine.add_request(prompt, params)
    shared_seen = False
    outputs = {}
    while engine.has_unfinished_requests:
        running = [r for r in engine.scheduler.running if r.group_id == rid]
        if len(running) == 3:
            tables = [engine.block_manager.block_table(r.request_id) for r in running]
            assert tables[0][:2] == tables[1][:2] == tables[2][:2]
            assert [engine.block_manager.blocks[b].ref_count for b in tables[0][:2]] == [3, 3]
            shared_seen = True
        for d in engine.step():
            if d.finished:
                outputs[d.request_id] = d.output
    assert shared_seen
    out = outputs[rid]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 12 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) == 3  # different sibling seeds
    # seeded: the same completions again, this time next to other traffic
    engine2 = make_engine(qwen_tokenizer, block_size=16)
    for p in random_prompts(4, seed=9):
        engine2.add_request(p, SamplingParams(temperature=0.8, max_tokens=20))
    rid2 = engine2.add_request(prompt, params)
    out2 = engine2.run_until_done()[rid2]
    assert [c.token_ids for c in out2.outputs] == [c.token_ids for c in out.outputs]
    engine.check_block_accounting()


def test_seeded_sampling_is_batch_invariant(qwen_tokenizer) -> None:
    prompt = random_prompts(1, lo=20, hi=21, seed=5)[0]
    params = SamplingParams(
        temperature=0.9,
        top_k=50,
        top_p=0.9,
        min_p=0.01,
        max_tokens=16,
        seed=1234,
        repetition_penalty=1.1,
        presence_penalty=0.2,
        frequency_penalty=0.1,
        ignore_eos=True,
    )
    alone = make_engine(qwen_tokenizer)
    rid = alone.add_request(prompt, params)
    ref = alone.run_until_done()[rid].outputs[0].token_ids
    crowded = make_engine(qwen_tokenizer, num_kv_blocks=14, max_model_len=128)  # forces preemptions
    for p in random_prompts(6, seed=11):
        crowded.add_request(p, SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True))
    rid = crowded.add_request(prompt, params)
    assert crowded.run_until_done()[rid].outputs[0].token_ids == ref
    assert crowded.scheduler.num_preemptions > 0


def test_stop_strings_stop_token_ids_and_max_tokens(qwen_tokenizer) -> None:
    prompt = random_prompts(1, lo=12, hi=13, seed=2)[0]
    engine = make_engine(qwen_tokenizer)
    rid = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    full = engine.run_until_done()[rid].outputs[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 30
    assert full.text == qwen_tokenizer.decode(full.token_ids, skip_special_tokens=True)

    # a stop string from the middle of the text: the output ends right before it
    text = full.text
    cut = len(qwen_tokenizer.decode(full.token_ids[:10], skip_special_tokens=True))
    stop = text[cut : cut + 3]
    assert stop and text.find(stop) == cut, "pick a stop string that first occurs at the cut"
    rid = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=30, stop=["zzzzzz", stop]))
    out = engine.run_until_done()[rid].outputs[0]
    assert out.finish_reason == "stop"
    assert out.text == text[:cut]
    assert stop not in out.text

    # a stop token id: kept in token_ids, not in the text
    stop_id = full.token_ids[6]
    first = full.token_ids.index(stop_id)
    rid = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[stop_id]))
    out = engine.run_until_done()[rid].outputs[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == full.token_ids[: first + 1]
    assert out.text == qwen_tokenizer.decode(full.token_ids[:first], skip_special_tokens=True)
    engine.check_block_accounting()


def test_logprobs_match_the_contiguous_reference(qwen_tokenizer) -> None:
    model = tiny_model()
    prompt = random_prompts(1, lo=9, hi=10, seed=4)[0]
    engine = make_engine(qwen_tokenizer)
    rid = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=5, logprobs=3, ignore_eos=True))
    out = engine.run_until_done()[rid].outputs[0]
    assert out.logprobs is not None and len(out.logprobs) == 5
    seq = ContiguousSequence(model, 64)
    logits = seq.step(prompt)[-1]
    for token, entry in zip(out.token_ids, out.logprobs, strict=True):
        ref = torch.log_softmax(logits, dim=-1)
        values, ids = ref.topk(3)
        assert entry.token_id == token == int(ids[0])
        assert entry.logprob == pytest.approx(float(ref[token]), abs=1e-4)
        assert [t for t, _ in entry.top] == ids.tolist()
        assert [lp for _, lp in entry.top] == pytest.approx(values.tolist(), abs=1e-4)
        logits = seq.step([token])[-1]


def test_too_long_prompt_fails_alone(qwen_tokenizer, prompts, references) -> None:
    engine = make_engine(qwen_tokenizer, max_model_len=100)
    ids = [engine.add_request(p, GREEDY) for p in prompts[:3]]
    with pytest.raises(ContextTooLongError):
        engine.add_request(list(range(1000, 1100)), GREEDY)
    with pytest.raises(TokenizationError):
        engine.add_request([5, 10**9], GREEDY)
    outputs = engine.run_until_done()
    assert [outputs[i].outputs[0].token_ids for i in ids] == references[:3]
    engine.check_block_accounting()


def test_generation_stops_at_max_model_len(qwen_tokenizer) -> None:
    engine = make_engine(qwen_tokenizer, max_model_len=40)
    rid = engine.add_request(list(range(200, 230)), SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))
    out = engine.run_until_done()[rid].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 10


def test_an_exception_in_one_request_fails_only_that_request(qwen_tokenizer, prompts, references) -> None:
    engine = make_engine(qwen_tokenizer)
    ids = [engine.add_request(p, GREEDY) for p in prompts[:4]]
    victim = engine._groups[ids[1]].completions[0]

    class Broken:
        def push(self, token_id: int) -> str:
            raise RuntimeError("detokenizer exploded")

        def flush(self) -> str:
            return ""

    victim.detokenizer = Broken()
    outputs = engine.run_until_done()
    bad = outputs[ids[1]].outputs[0]
    assert bad.finish_reason == "error" and isinstance(bad.error, InferenceError)
    assert "exploded" in str(bad.error)
    for k in (0, 2, 3):
        assert outputs[ids[k]].outputs[0].token_ids == references[k]
    engine.check_block_accounting()


def test_a_failing_forward_fails_its_batch_and_the_engine_goes_on(qwen_tokenizer, prompts, references) -> None:
    engine = make_engine(qwen_tokenizer)
    rid = engine.add_request(prompts[0], GREEDY)
    real_execute = engine.runner.execute
    engine.runner.execute = lambda batch: (_ for _ in ()).throw(RuntimeError("device lost"))
    deltas = engine.step()
    assert deltas[-1].finished and deltas[-1].output.outputs[0].finish_reason == "error"
    engine.runner.execute = real_execute
    rid = engine.add_request(prompts[1], GREEDY)
    assert engine.run_until_done()[rid].outputs[0].token_ids == references[1]
    engine.check_block_accounting()


def test_abort_frees_blocks(qwen_tokenizer, prompts) -> None:
    engine = make_engine(qwen_tokenizer)
    ids = [engine.add_request(p, GREEDY) for p in prompts[:3]]
    for _ in range(3):
        engine.step()
    assert engine.abort(ids[0])
    assert not engine.abort("nope")
    outputs = engine.run_until_done()
    assert outputs[ids[0]].outputs[0].finish_reason == "abort"
    assert 0 < len(outputs[ids[0]].outputs[0].token_ids) < 24
    assert outputs[ids[1]].outputs[0].finish_reason == "length"
    engine.check_block_accounting()


def test_thousand_random_requests_through_the_engine_leave_no_leak(qwen_tokenizer) -> None:
    rng = random.Random(0)
    # bookkeeping only: the smallest model that still emits the real 151,936-wide vocabulary
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM.random(config, seed=1)
    engine = make_engine(
        qwen_tokenizer,
        model=model,
        block_size=8,
        num_kv_blocks=40,
        max_model_len=96,
        max_num_seqs=32,
        max_num_batched_tokens=128,
    )
    submitted, live = 0, []
    finished = 0
    while submitted < 1000 or engine.has_unfinished_requests:
        for _ in range(rng.randrange(0, 12)):
            if submitted < 1000:
                prompt = [rng.randrange(100, 200) for _ in range(rng.randrange(1, 50))]
                params = SamplingParams(
                    temperature=rng.choice([0, 1.0]),
                    max_tokens=rng.randrange(1, 12),
                    n=rng.choice([1, 1, 1, 2]),
                    ignore_eos=True,
                )
                live.append(engine.add_request(prompt, params))
                submitted += 1
        if live and rng.random() < 0.15:
            engine.abort(live.pop(rng.randrange(len(live))))
        for d in engine.step():
            if d.finished:
                finished += 1
                if d.request_id in live:
                    live.remove(d.request_id)
    assert finished == 1000
    assert engine.scheduler.num_preemptions > 0
    assert engine.block_manager.num_cache_hit_blocks > 0
    engine.check_block_accounting()
    assert all(r.status is RequestStatus.FINISHED for r in engine.scheduler.waiting) or not engine.scheduler.waiting
