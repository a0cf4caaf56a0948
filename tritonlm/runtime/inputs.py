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

from tritonlm.errors import ConfigError, TokenizationError

Prompt = str | Sequence[Mapping[str, Any]] | Sequence[int]
PromptKind = Literal["text", "chat", "token_ids"]


class PromptTokenizer(Protocol):
    """What tokenizing a prompt needs (:class:`tritonlm.model.tokenizer.Tokenizer` has it)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True) -> str: ...


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


class InputProcessor:
    """Turns prompts into token ids for one tokenizer and vocabulary. Stateless, thread-safe."""

    def __init__(self, tokenizer: PromptTokenizer, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size

    def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids of ``prompt``; :class:`TokenizationError` if it is none, empty or out of vocabulary."""
        kind = prompt_kind(prompt)
        if kind == "text":
            assert isinstance(prompt, str)
            ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        elif kind == "chat":
            messages = [dict(m) for m in prompt if isinstance(m, Mapping)]
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
        return ids


__all__ = ["InputProcessor", "Prompt", "PromptKind", "PromptTokenizer", "prompt_kind", "split_prompts"]
