"""From appended tokens to what the caller sees: text, stop conditions, stream deltas, the final
:class:`RequestOutput` with usage. No torch.

A user request is a :class:`RequestGroup`: ``n`` sibling :class:`Request` s over one prompt, each
with a :class:`CompletionState`. Per appended token the engine calls :meth:`OutputProcessor.process_token`
(detokenize, decide whether and why the request finishes), finishes the request in the scheduler if
so, then :meth:`OutputProcessor.emit` (the new text; the group's final delta once every sibling is
finished). Text that may be the start of a stop string is held back until it is known not to be.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from tritonlm.model.tokenizer import IncrementalDetokenizer, Tokenizer
from tritonlm.runtime.outputs import (
    CompletionOutput,
    FinishReason,
    RequestOutput,
    RequestUsage,
    StreamDelta,
    TokenLogprob,
)
from tritonlm.runtime.request import Request
from tritonlm.runtime.sampling_params import SamplingParams


class Detokenizer(Protocol):
    """Token ids in, text out, never splitting a UTF-8 character."""

    def push(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


@dataclass
class CompletionState:
    """The caller-visible state of one request (one of a group's ``n``)."""

    detokenizer: Detokenizer
    text: str = ""
    num_emitted_chars: int = 0
    num_emitted_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None


@dataclass
class RequestGroup:
    """One user request: ``n`` sibling requests over one prompt, and their completions."""

    group_id: str
    prompt: Any  # as given: text, chat messages or token ids
    prompt_token_ids: list[int]
    params: SamplingParams
    requests: list[Request]
    completions: list[CompletionState]
    arrival_time: float
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def is_finished(self) -> bool:
        return all(r.is_finished for r in self.requests)


class OutputProcessor:
    """Owns the :class:`RequestGroup` of every unfinished user request, by group id."""

    def __init__(self, tokenizer: Tokenizer, eos_token_ids: Iterable[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.groups: dict[str, RequestGroup] = {}

    def add_group(self, prompt: Any, prompt_token_ids: list[int], requests: list[Request]) -> RequestGroup:
        """Register the siblings of one user request (``requests[0].group_id`` names it)."""
        params = requests[0].params
        completions = [
            CompletionState(
                detokenizer=IncrementalDetokenizer(self.tokenizer, skip_special_tokens=params.skip_special_tokens),
                logprobs=[] if params.logprobs is not None else None,
            )
            for _ in requests
        ]
        group = RequestGroup(
            requests[0].group_id, prompt, prompt_token_ids, params, requests, completions, time.perf_counter()
        )
        self.groups[group.group_id] = group
        return group

    # ---- per token ---------------------------------------------------------------------------
    def process_token(
        self, request: Request, token: int, logprob: TokenLogprob | None, now: float, *, grammar_terminated: bool
    ) -> FinishReason | None:
        """Account for ``token``, just appended to ``request.token_ids``; returns why the request
        finishes with it, if it does (a stop token or string, the end of its grammar, its budget).
        Mutates the request's :class:`CompletionState`."""
        group = self.groups[request.group_id]
        completion = group.completions[request.index]
        params = request.params
        if group.first_token_time is None:
            group.first_token_time = now
        if completion.logprobs is not None and logprob is not None:
            completion.logprobs.append(logprob)
        if token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids):
            completion.text += completion.detokenizer.flush()
            return "stop"
        previous_len = len(completion.text)
        completion.text += completion.detokenizer.push(token)
        if _cut_at_stop_string(completion, params.stop, previous_len):
            return "stop"
        reason: FinishReason | None = None
        if grammar_terminated:
            reason = "stop"
        elif request.num_output_tokens >= params.max_tokens or request.num_tokens >= request.max_total_tokens:
            reason = "length"
        if reason is not None:
            completion.text += completion.detokenizer.flush()
        return reason

    def emit(self, request: Request) -> list[StreamDelta]:
        """The request's new text and tokens since its last delta (all of it once it is finished,
        else all but a possible stop-string start), then the group's final delta if it is done."""
        group = self.groups[request.group_id]
        completion = group.completions[request.index]
        if request.is_finished:
            visible = len(completion.text)
        else:
            hold = max((len(s) for s in request.params.stop), default=1) - 1
            visible = max(completion.num_emitted_chars, len(completion.text) - hold)
        delta_text = completion.text[completion.num_emitted_chars : visible]
        new_tokens = request.token_ids[request.num_prompt_tokens + completion.num_emitted_tokens :]
        completion.num_emitted_chars = visible
        completion.num_emitted_tokens = request.num_output_tokens
        deltas = (
            [StreamDelta(group.group_id, request.index, delta_text, new_tokens)] if delta_text or new_tokens else []
        )
        deltas.extend(self.finish_group_if_done(group.group_id))
        return deltas

    # ---- finishing ---------------------------------------------------------------------------
    def finish_group_if_done(self, group_id: str) -> list[StreamDelta]:
        """Once every sibling is finished: the unsent text of each, then the finished delta with the
        :class:`RequestOutput` (last); the group is forgotten. ``[]`` otherwise."""
        group = self.groups.get(group_id)
        if group is None or not group.is_finished:
            return []
        group.finish_time = time.perf_counter()
        del self.groups[group_id]
        output = request_output(group)
        deltas = []
        for request, completion in zip(group.requests, group.completions, strict=True):
            tail = completion.text[completion.num_emitted_chars :]
            completion.num_emitted_chars = len(completion.text)
            if request.index == 0:
                deltas.append(StreamDelta(group_id, 0, tail, [], finished=True, output=output))
            elif tail:
                deltas.append(StreamDelta(group_id, request.index, tail))
        deltas.sort(key=lambda d: d.finished)  # the finished delta goes last
        return deltas


def _cut_at_stop_string(completion: CompletionState, stop: tuple[str, ...], previous_len: int) -> bool:
    """Cut ``completion.text`` at the first stop string that the newest text completed, if any."""
    if not stop:
        return False
    start = max(0, previous_len - max(len(s) for s in stop) + 1)
    hits = [pos for s in stop if (pos := completion.text.find(s, start)) >= 0]
    if not hits:
        return False
    completion.text = completion.text[: min(hits)]
    return True


def request_output(group: RequestGroup) -> RequestOutput:
    """The output of a group (finished, or as far as it got), with usage and timing."""
    outputs = [
        CompletionOutput(
            index=r.index,
            text=c.text,
            token_ids=r.output_token_ids,
            finish_reason=r.finish_reason,
            logprobs=c.logprobs,
            error=r.error,
        )
        for r, c in zip(group.requests, group.completions, strict=True)
    ]
    end = group.finish_time or time.perf_counter()
    completion_tokens = sum(len(o.token_ids) for o in outputs)
    first = group.first_token_time
    decode_rate = None
    if first is not None and end > first and completion_tokens > len(outputs):
        decode_rate = (completion_tokens - len(outputs)) / (end - first)
    usage = RequestUsage(
        prompt_tokens=len(group.prompt_token_ids),
        completion_tokens=completion_tokens,
        cached_prompt_tokens=group.requests[0].num_cached_tokens,
        time_to_first_token_s=None if first is None else first - group.arrival_time,
        total_time_s=end - group.arrival_time,
        decode_tokens_per_s=decode_rate,
    )
    return RequestOutput(group.group_id, group.prompt, list(group.prompt_token_ids), outputs, usage)


def failed_output(request_id: str, prompt: Any, error: BaseException, n: int = 1) -> RequestOutput:
    """The output of a request rejected before it reached the scheduler."""
    outputs = [CompletionOutput(i, "", [], "error", None, error) for i in range(n)]
    usage = RequestUsage(0, 0, 0, None, 0.0, None)
    return RequestOutput(request_id, prompt, [], outputs, usage)


def aborted_output(request_id: str, prompt: Any, n: int = 1) -> RequestOutput:
    """The output of a request aborted before it reached the scheduler (nothing generated)."""
    outputs = [CompletionOutput(i, "", [], "abort", None, None) for i in range(n)]
    usage = RequestUsage(0, 0, 0, None, 0.0, None)
    return RequestOutput(request_id, prompt, [], outputs, usage)


__all__ = [
    "CompletionState",
    "Detokenizer",
    "OutputProcessor",
    "RequestGroup",
    "aborted_output",
    "failed_output",
    "request_output",
]
