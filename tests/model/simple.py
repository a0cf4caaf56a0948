"""A minimal single-sequence decoding loop over a contiguous KV cache.

The contiguous cache is the degenerate paged layout: one block per sequence whose size is the
whole context, so block table ``[0]`` and slot = position. It is the reference the batched
runtime is checked against, and what the model-level tests and benches use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from tritonlm.errors import ContextTooLongError
from tritonlm.model.attention import AttentionMetadata, KVCache
from tritonlm.model.qwen2 import Qwen2ForCausalLM


class ContiguousSequence:
    """One sequence's contiguous KV cache plus the step function that extends it."""

    def __init__(self, model: Qwen2ForCausalLM, max_len: int) -> None:
        self.model = model
        self.max_len = max_len
        self.cache: KVCache = model.allocate_kv_cache(num_blocks=1, block_size=max_len)
        self.length = 0

    def step(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Append ``token_ids`` (prefill or one decode token); returns float32 logits ``[len, V]``."""
        n = len(token_ids)
        if self.length + n > self.max_len:
            raise ContextTooLongError(f"{self.length + n} tokens exceed the cache of {self.max_len}")
        start = self.length
        self.length += n
        attn = AttentionMetadata.build([n], [self.length], [[0]], self.max_len, device=self.model.device)
        ids = torch.tensor(token_ids, dtype=torch.int64, device=self.model.device)
        positions = torch.arange(start, self.length, device=self.model.device)
        hidden = self.model(ids, positions, attn, self.cache)
        return self.model.compute_logits(hidden, packed=attn.is_decode)


def greedy_tokens(
    model: Qwen2ForCausalLM,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    stop_ids: Sequence[int] = (),
) -> Iterator[int]:
    """Greedy decoding with the contiguous KV cache; stops after a token in ``stop_ids``."""
    seq = ContiguousSequence(model, len(prompt_ids) + max_new_tokens)
    logits = seq.step(list(prompt_ids))[-1]
    for i in range(max_new_tokens):
        token = int(torch.argmax(logits))
        yield token
        if token in stop_ids or i == max_new_tokens - 1:
            return
        logits = seq.step([token])[-1]


def greedy_tokens_no_cache(model: Qwen2ForCausalLM, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding that recomputes the whole prefix every step (the no-KV-cache baseline)."""
    ids = list(prompt_ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        seq = ContiguousSequence(model, len(ids))
        token = int(torch.argmax(seq.step(ids)[-1]))
        out.append(token)
        ids.append(token)
    return out
