"""Packed token masks: uint32 words, bit j of word w set = token 32*w + j allowed.

``allocate_token_bitmask`` gives the int32 ``[batch, ceil(vocab/32)]`` array the runtime
fills one row per sequence (the same bits viewed as int32).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def num_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def allocate_token_bitmask(batch: int, vocab_size: int) -> np.ndarray:
    """A ``[batch, ceil(vocab_size / 32)]`` int32 array, all tokens allowed."""
    return np.full((batch, num_words(vocab_size)), -1, dtype=np.int32)


def ids_to_mask(ids: Iterable[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """Packed uint32 mask with ``ids`` set."""
    bits = np.zeros(num_words(vocab_size) * 32, dtype=bool)
    arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
    if arr.size:
        bits[arr] = True
    return np.packbits(bits, bitorder="little").view(np.uint32)
