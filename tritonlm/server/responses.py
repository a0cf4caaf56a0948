"""OpenAI response bodies and stream chunks for ``/v1/chat/completions`` and ``/v1/completions``.

A :class:`ResponseShape` says how one endpoint spells a choice (``message`` vs ``text``, its
logprobs format, its stream deltas); a :class:`ResponseFrame` wraps choices in the envelope
every body and chunk of one response shares (id, object, created, model). Everything here is
pure: completions in, JSON-ready dicts out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tritonlm.runtime.outputs import CompletionOutput, RequestOutput, TokenLogprob

Choice = dict[str, Any]


class TokenVocabulary(Protocol):
    """What the logprob formats need from a tokenizer: the raw bytes of every token id."""

    @property
    def token_bytes(self) -> Sequence[bytes]: ...


class ResponseShape(Protocol):
    """How one endpoint spells its choices, whole and streamed."""

    id_prefix: str
    object: str
    chunk_object: str

    def choice(self, completion: CompletionOutput) -> Choice: ...

    def head_choices(self, n: int) -> list[Choice]: ...

    def text_choice(self, index: int, text: str) -> Choice: ...

    def final_choice(self, completion: CompletionOutput) -> Choice: ...


def usage(output: RequestOutput) -> dict[str, int]:
    u = output.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def _token_text(vocab: TokenVocabulary, token_id: int) -> str:
    return vocab.token_bytes[token_id].decode("utf-8", errors="replace")


def chat_logprobs(vocab: TokenVocabulary, logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """The chat format: ``{"content": [{token, logprob, bytes, top_logprobs}, ...]}``."""
    if logprobs is None:
        return None

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        raw = vocab.token_bytes[token_id]
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return {
        "content": [
            {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, p) for t, p in lp.top]} for lp in logprobs
        ]
    }


def completion_logprobs(vocab: TokenVocabulary, logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """The legacy completions format: parallel lists ``tokens``, ``token_logprobs``, ..."""
    if logprobs is None:
        return None
    tokens = [_token_text(vocab, lp.token_id) for lp in logprobs]
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{_token_text(vocab, t): p for t, p in lp.top} for lp in logprobs],
        "text_offset": [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))],
    }


class ChatShape:
    """``chat.completion``: choices carry a ``message``; chunks a ``delta``, the first of each
    completion announcing the assistant role."""

    id_prefix = "chatcmpl-"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def __init__(self, vocab: TokenVocabulary) -> None:
        self.vocab = vocab

    def choice(self, completion: CompletionOutput) -> Choice:
        return {
            "index": completion.index,
            "message": {"role": "assistant", "content": completion.text},
            "logprobs": chat_logprobs(self.vocab, completion.logprobs),
            "finish_reason": completion.finish_reason,
        }

    def head_choices(self, n: int) -> list[Choice]:
        return [self._delta(i, {"role": "assistant", "content": ""}) for i in range(n)]

    def text_choice(self, index: int, text: str) -> Choice:
        return self._delta(index, {"content": text})

    def final_choice(self, completion: CompletionOutput) -> Choice:
        logprobs = chat_logprobs(self.vocab, completion.logprobs)
        return self._delta(completion.index, {}, completion.finish_reason, logprobs)

    @staticmethod
    def _delta(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> Choice:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


class CompletionShape:
    """``text_completion``: choices and chunks carry ``text``; streamed chunks have no logprobs."""

    id_prefix = "cmpl-"
    object = "text_completion"
    chunk_object = "text_completion"

    def __init__(self, vocab: TokenVocabulary) -> None:
        self.vocab = vocab

    def choice(self, completion: CompletionOutput) -> Choice:
        return {
            "index": completion.index,
            "text": completion.text,
            "logprobs": completion_logprobs(self.vocab, completion.logprobs),
            "finish_reason": completion.finish_reason,
        }

    def head_choices(self, n: int) -> list[Choice]:
        return []

    def text_choice(self, index: int, text: str) -> Choice:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": None}

    def final_choice(self, completion: CompletionOutput) -> Choice:
        return {"index": completion.index, "text": "", "logprobs": None, "finish_reason": completion.finish_reason}


@dataclass(frozen=True)
class ResponseFrame:
    """The envelope of one response: its body, or its stream chunks in order (head chunks, a
    chunk per text delta, a final chunk per completion, then the usage chunk if asked for)."""

    shape: ResponseShape
    id: str
    created: int
    model: str
    include_usage: bool = False

    def body(self, output: RequestOutput) -> dict[str, Any]:
        choices = [self.shape.choice(c) for c in output.outputs]
        return {**self._envelope(self.shape.object, choices), "usage": usage(output)}

    def head_chunks(self, n: int) -> list[dict[str, Any]]:
        return [self.chunk(choice) for choice in self.shape.head_choices(n)]

    def text_chunk(self, index: int, text: str) -> dict[str, Any]:
        return self.chunk(self.shape.text_choice(index, text))

    def final_chunks(self, output: RequestOutput) -> list[dict[str, Any]]:
        chunks = [self.chunk(self.shape.final_choice(c)) for c in output.outputs]
        if self.include_usage:
            chunks.append({**self._envelope(self.shape.chunk_object, []), "usage": usage(output)})
        return chunks

    def chunk(self, choice: Choice) -> dict[str, Any]:
        return self._envelope(self.shape.chunk_object, [choice])

    def _envelope(self, object_name: str, choices: list[Choice]) -> dict[str, Any]:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model, "choices": choices}


__all__ = [
    "ChatShape",
    "CompletionShape",
    "ResponseFrame",
    "ResponseShape",
    "TokenVocabulary",
    "chat_logprobs",
    "completion_logprobs",
    "usage",
]
