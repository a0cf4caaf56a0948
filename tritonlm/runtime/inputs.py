"""Prompts: the one classifier (text / chat messages / token ids) and the one tokenizer. No torch.

A prompt is raw text (tokenized as is, no template), a non-empty list of chat messages
(``{"role": ..., "content": ...}`` mappings; the model's chat template is applied with a
generation prompt), or a list of token ids (checked against the vocabulary). Every layer that
has to tell these apart (the engine, ``LLM.generate``'s batching, the server) asks
:func:`prompt_kind`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from tritonlm.errors import ConfigError, ContextTooLongError, TokenizationError

Prompt = str | Sequence[Mapping[str, Any]] | Sequence[int]
PromptKind = Literal["text", "chat", "token_ids"]


class PromptTokenizer(Protocol):
    """What tokenizing a prompt needs (:class:`tritonlm.model.tokenizer.Tokenizer` has it)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True) -> str: ...

    @property
    def token_bytes(self) -> Sequence[bytes]: ...


def _is_token_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def prompt_kind(prompt: object) -> PromptKind | None:
    """What ``prompt`` is, or None if it is no prompt (e.g. a list of prompts).

    An empty list counts as (empty) token ids; tokenizing it then fails with "the prompt is empty".
    """
    if isinstance(prompt, str):
        return "text"
    if not isinstance(prompt, Sequence) or isinstance(prompt, (bytes, bytearray)):
        return None
    if prompt and all(isinstance(m, Mapping) for m in prompt):
        return "chat"
    if all(_is_token_id(t) for t in prompt):
        return "token_ids"
    return None


def split_prompts(prompts: object) -> list[Any]:
    """One prompt, or a list of prompts, as a list of prompts (an empty list: no prompts)."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, Sequence):
        raise ConfigError(f"prompts: expected a prompt or a list of prompts, got {type(prompts).__name__}")
    if prompts and prompt_kind(prompts) is not None:
        return [prompts]
    return list(prompts)


def _text_bytes(text: str, where: str) -> int:
    """UTF-8 length of ``text``; :class:`TokenizationError` naming ``where`` if it is not valid
    Unicode (a lone surrogate, which JSON's ``\\udXXX`` escapes can carry)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise TokenizationError(
            f"{where} is not valid Unicode: a lone surrogate {text[exc.start]!r} at character {exc.start}"
        ) from None


def _message_bytes(messages: Sequence[Mapping[str, Any]]) -> int:
    """UTF-8 bytes of the text the messages' contents put into the rendered prompt (a lower
    bound of the prompt's length); checks every string is valid Unicode."""
    total = 0
    for i, message in enumerate(messages):
        for key, value in message.items():
            where = f"messages[{i}].{key}"
            if isinstance(value, str):
                total += _text_bytes(value, where)
            elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
                for j, part in enumerate(value):
                    if isinstance(part, Mapping):
                        for part_key, text in part.items():
                            if isinstance(text, str):
                                total += _text_bytes(text, f"{where}[{j}].{part_key}")
    return total


class InputProcessor:
    """Turns prompts into token ids for one tokenizer and vocabulary. Thread-safe (the only state
    is the longest token's length, computed once).

    A text of B bytes cannot be fewer than ``B / longest_token_bytes`` tokens, so a prompt whose
    bytes alone prove it over ``max_prompt_tokens`` is refused before it is tokenized.
    """

    def __init__(self, tokenizer: PromptTokenizer, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._longest_token_bytes: int | None = None

    @property
    def longest_token_bytes(self) -> int:
        if self._longest_token_bytes is None:
            self._longest_token_bytes = max((len(b) for b in self.tokenizer.token_bytes), default=1) or 1
        return self._longest_token_bytes

    def _check_bytes(self, num_bytes: int, max_prompt_tokens: int | None) -> None:
        if max_prompt_tokens is None:
            return
        min_tokens = -(-num_bytes // self.longest_token_bytes)
        if min_tokens > max_prompt_tokens:
            raise ContextTooLongError(
                f"the prompt has {num_bytes} bytes, so at least {min_tokens} tokens; at most "
                f"{max_prompt_tokens} fit the context"
            )

    def tokenize(self, prompt: Prompt, *, max_prompt_tokens: int | None = None) -> list[int]:
        """Token ids of ``prompt``; :class:`TokenizationError` if it is none, empty, not valid
        Unicode or out of vocabulary; :class:`ContextTooLongError` if it has more than
        ``max_prompt_tokens`` tokens (checked on its bytes first when they prove it)."""
        kind = prompt_kind(prompt)
        if kind == "text":
            assert isinstance(prompt, str)
            self._check_bytes(_text_bytes(prompt, "the prompt"), max_prompt_tokens)
            ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        elif kind == "chat":
            messages = [dict(m) for m in prompt if isinstance(m, Mapping)]
            self._check_bytes(_message_bytes(messages), max_prompt_tokens)
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        elif kind == "token_ids":
            ids = [t for t in prompt if isinstance(t, int)]
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise TokenizationError(f"prompt token ids {bad[:5]} outside the vocabulary [0, {self.vocab_size})")
        else:
            raise TokenizationError(
                f"a prompt is a str, a list of chat messages or a list of token ids; got {type(prompt).__name__}"
            )
        if not ids:
            raise TokenizationError("the prompt is empty")
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            raise ContextTooLongError(
                f"the prompt has {len(ids)} tokens; at most {max_prompt_tokens} fit the context "
                "(which holds at least one generated token too)"
            )
        return ids


__all__ = ["InputProcessor", "Prompt", "PromptKind", "PromptTokenizer", "prompt_kind", "split_prompts"]
