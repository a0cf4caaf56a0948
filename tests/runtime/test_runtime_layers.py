"""The engine's parts on their own: who samples (SchedulerOutput), structured output's
jump-forward / budget closing / per-row mask errors, the output processor's stop strings,
and that bookkeeping modules import no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tritonlm.runtime.block_manager import BlockManager
from tritonlm.runtime.config import RequestLimits
from tritonlm.runtime.output_processor import OutputProcessor
from tritonlm.runtime.request import Request, RequestStatus
from tritonlm.runtime.sampling_params import SamplingParams
from tritonlm.runtime.scheduler import Scheduler
from tritonlm.runtime.structured_output import CLOSING_WINDOW_TOKENS, StructuredOutputManager

EOS = 151645


def _req(request_id: str, prompt_len: int, params: SamplingParams | None = None, matcher=None) -> Request:
    params = params or SamplingParams(max_tokens=100, temperature=0)
    return Request(
        request_id=request_id,
        group_id=request_id,
        index=0,
        token_ids=[7] * prompt_len,
        num_prompt_tokens=prompt_len,
        params=params,
        sampling_seed=0,
        arrival_order=0,
        max_total_tokens=prompt_len + params.max_tokens,
        matcher=matcher,
    )


def test_only_requests_whose_step_reaches_their_last_token_sample() -> None:
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    short, long = _req("short", 3), _req("long", 25)
    sched.add(short)
    sched.add(long)
    out = sched.schedule()
    assert out.num_scheduled_tokens == {"short": 3, "long": 7}
    assert out.samples(short) and not out.samples(long)
    assert out.sampling_requests() == [short]


class FakeMatcher:
    """A grammar that accepts anything, forces ``forced`` next and completes with ``completion``."""

    def __init__(self, forced: list[int], completion: list[int] | None) -> None:
        self.forced, self.completion = forced, completion
        self.accepted: list[int] = []

    def accept_token(self, token_id: int) -> bool:
        self.accepted.append(token_id)
        return True

    def rollback(self, num_tokens: int) -> None:
        del self.accepted[-num_tokens:]

    def is_terminated(self) -> bool:
        return False

    def fill_next_token_bitmask(self, bitmask, row: int = 0) -> None:
        raise RuntimeError("mask exploded")

    def find_forced_tokens(self) -> list[int]:
        return list(self.forced)

    def find_completion_tokens(self) -> list[int] | None:
        return self.completion


def test_forced_tokens_only_without_logprobs() -> None:
    manager = StructuredOutputManager(None, 100, [EOS], RequestLimits())
    matcher = FakeMatcher([4, 5], [9])
    assert manager.forced_tokens(_req("a", 3, matcher=matcher)) == [4, 5]
    with_logprobs = SamplingParams(max_tokens=10, logprobs=0)
    assert manager.forced_tokens(_req("b", 3, with_logprobs, matcher=matcher)) == []
    assert manager.forced_tokens(_req("c", 3)) == []


def test_budget_closing_fits_tokens_and_appends_the_completion_with_eos() -> None:
    manager = StructuredOutputManager(None, 100, [EOS, 3], RequestLimits())
    params = SamplingParams(max_tokens=CLOSING_WINDOW_TOKENS + 4)
    far = _req("far", 3, params, FakeMatcher([], [1, 2]))
    assert not manager.closes_within_budget(far)
    near = _req("near", 3, params, FakeMatcher([], [1, 2]))
    near.token_ids.extend([8] * (params.max_tokens - 3))  # 3 tokens left, EOS included
    assert manager.closes_within_budget(near)
    assert manager.fit_token_to_budget(near, 11) == 1  # after 11, [1, 2] + EOS would need 4
    assert near.matcher.accepted == []  # left as it was
    assert manager.closing_tokens(near) == [1, 2, EOS]
    unbounded = _req("u", 3, SamplingParams(max_tokens=CLOSING_WINDOW_TOKENS + 4, ignore_eos=True), FakeMatcher([], []))
    assert not manager.closes_within_budget(unbounded)


def test_mask_errors_come_back_per_row() -> None:
    pytest.importorskip("numpy")
    manager = StructuredOutputManager(None, 100, [EOS], RequestLimits())
    sampling = [_req("free", 3), _req("bad", 3, matcher=FakeMatcher([], None))]

    class Applier:
        def apply_token_bitmask(self, logits, rows, bitmask) -> None:
            assert rows == [1] and bitmask.shape[0] == 1

    job = manager.start_masks(sampling)
    errors = manager.apply_masks(job, object(), sampling, Applier())
    assert list(errors) == [1] and "mask exploded" in str(errors[1])
    assert manager.start_masks(sampling[:1]) is None


def test_stop_strings_cut_the_text_and_hold_back_a_possible_start(qwen_tokenizer) -> None:
    processor = OutputProcessor(qwen_tokenizer, [EOS])
    params = SamplingParams(max_tokens=50, stop=["END"])
    request = _req("r", 2, params)
    request.status = RequestStatus.RUNNING
    processor.add_group([1, 2], [1, 2], [request])
    sent = ""
    reason = None
    for token in qwen_tokenizer.encode("hello wor ENDing"):
        request.token_ids.append(token)
        reason = processor.process_token(request, token, None, 0.0, grammar_terminated=False)
        if reason is not None:
            request.status = RequestStatus.FINISHED
            request.finish_reason = reason
        deltas = processor.emit(request)
        sent += "".join(d.text for d in deltas)
        if reason is not None:
            assert deltas[-1].finished and deltas[-1].output is not None
            break
    assert reason == "stop" and sent == "hello wor "
    assert not processor.groups


def test_bookkeeping_modules_import_no_torch() -> None:
    modules = ["request", "scheduler", "block_manager", "structured_output", "output_processor", "inputs"]
    modules += ["openai_params", "metrics", "config", "outputs", "sampling_params"]
    code = "import sys\n" + "".join(f"import tritonlm.runtime.{m}\n" for m in modules)
    code += "assert 'torch' not in sys.modules, 'torch imported'\n"
    subprocess.run([sys.executable, "-c", code], check=True)
