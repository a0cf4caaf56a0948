"""What a request returns: completions, usage and timing, and streamed deltas. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token's logprob and the ``k`` most likely alternatives (``(token_id, logprob)``)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass
class CompletionOutput:
    """One of the ``n`` completions of a request. ``text`` excludes stop strings and stop tokens;
    ``token_ids`` include a generated stop token (eos or one of ``stop_token_ids``)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None
    logprobs: list[TokenLogprob] | None = None
    error: BaseException | None = None


@dataclass
class RequestUsage:
    prompt_tokens: int
    completion_tokens: int  # over all n completions
    cached_prompt_tokens: int  # prompt tokens served from the prefix cache (first completion)
    time_to_first_token_s: float | None
    total_time_s: float
    # completion tokens over the time from the first token to the end (the decode rate)
    decode_tokens_per_s: float | None

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens over the whole request time (prefill included)."""
        return self.completion_tokens / self.total_time_s if self.total_time_s > 0 else 0.0


@dataclass
class RequestOutput:
    request_id: str
    prompt: Any  # the prompt as given: text, chat messages or token ids
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    usage: RequestUsage
    finished: bool = True

    @property
    def error(self) -> BaseException | None:
        """The first completion's error, if any (a bad prompt fails every completion)."""
        for out in self.outputs:
            if out.error is not None:
                return out.error
        return None

    @property
    def text(self) -> str:
        return self.outputs[0].text


@dataclass
class StreamDelta:
    """New text (and tokens) of one completion since its previous delta. The last delta of a
    request has ``finished=True`` and carries the whole ``output``."""

    request_id: str
    index: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    output: RequestOutput | None = None
