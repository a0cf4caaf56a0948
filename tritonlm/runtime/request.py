"""The scheduling unit: one sequence being generated. No torch."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tritonlm.runtime.outputs import FinishReason
from tritonlm.runtime.sampling_params import SamplingParams

if TYPE_CHECKING:
    from tritonlm.runtime.structured_output import GrammarMatcher


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    """One sequence: a prompt and the tokens generated after it.

    A user request with ``n > 1`` becomes ``n`` of these (``index`` 0 .. n-1, ids
    ``"{group_id}"`` for index 0 and ``"{group_id}#{index}"`` after); the later ones wait
    until index 0 has prefilled the prompt, then find its blocks in the prefix cache.

    Invariant: ``num_computed_tokens <= len(token_ids)``; the k/v of the first
    ``num_computed_tokens`` tokens are in this request's blocks.
    """

    request_id: str
    group_id: str
    index: int
    token_ids: list[int]  # prompt followed by the generated tokens; grows by one per decode step
    num_prompt_tokens: int
    params: SamplingParams
    sampling_seed: int
    arrival_order: int
    max_total_tokens: int  # stop with "length" once len(token_ids) reaches this
    waits_for: Request | None = None  # the sibling whose prefill this one reuses
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at the first admission
    num_preemptions: int = 0
    finish_reason: FinishReason | None = None
    error: BaseException | None = None
    matcher: GrammarMatcher | None = None  # the request's grammar state (constrained output only)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    @property
    def is_prefilled(self) -> bool:
        return self.num_computed_tokens >= self.num_prompt_tokens
