"""Apply a packed int32 token bitmask to logits in place (disallowed -> -inf)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tritonlm.kernels._utils import (
    KernelSpec,
    check_device,
    check_last_dim_contiguous,
    check_tensor,
    interpreting,
    ptr_sig,
)
from tritonlm.kernels.dtypes import FLOAT_DTYPES


class BitmaskConfig(NamedTuple):
    block: int  # vocabulary entries per program
    num_warps: int


CONFIG = BitmaskConfig(2048, 4)


@triton.jit
def _apply_token_bitmask_kernel(
    logits_ptr,  # [B, V] rows at stride_logits; disallowed entries overwritten with -inf
    mask_ptr,  # [B, W] int32 rows at stride_mask; bit j of word w allows token 32 * w + j
    vocab,
    words,
    stride_logits,
    stride_mask,
    BLOCK: tl.constexpr,
    INTERPRET: tl.constexpr,  # no float math here; kept for a uniform kernel interface
):
    row = tl.program_id(0).to(tl.int64)
    tok = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_vocab = tok < vocab
    word_idx = tok >> 5
    # tokens past the mask's coverage read word 0: disallowed
    word = tl.load(mask_ptr + row * stride_mask + word_idx, mask=in_vocab & (word_idx < words), other=0)
    allowed = ((word >> (tok & 31)) & 1) != 0
    neg_inf = tl.full([BLOCK], float("-inf"), dtype=tl.float32).to(logits_ptr.dtype.element_ty)
    tl.store(logits_ptr + row * stride_logits + tok, neg_inf, mask=in_vocab & ~allowed)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set ``logits [B, V]`` to -inf **in place** where ``bitmask [B, ceil(V/32)]`` int32 has a 0 bit."""
    op = "apply_token_bitmask"
    check_tensor(op, "logits", logits, ndim=2, dtypes=FLOAT_DTYPES)
    check_device(op, logits.device)
    check_tensor(op, "bitmask", bitmask, ndim=2, dtypes=(torch.int32,), device=logits.device)
    if bitmask.shape[0] != logits.shape[0]:
        raise ValueError(f"{op}: bitmask has {bitmask.shape[0]} rows for {logits.shape[0]} rows of logits")
    check_last_dim_contiguous(op, "logits", logits)
    check_last_dim_contiguous(op, "bitmask", bitmask)
    rows, vocab = logits.shape
    if rows == 0 or vocab == 0:
        return
    _apply_token_bitmask_kernel[(rows, triton.cdiv(vocab, CONFIG.block))](
        logits,
        bitmask,
        vocab,
        bitmask.shape[1],
        logits.stride(0),
        bitmask.stride(0),
        BLOCK=CONFIG.block,
        INTERPRET=interpreting(),
        num_warps=CONFIG.num_warps,
    )


def compile_specs() -> list[KernelSpec]:
    return [
        KernelSpec(
            _apply_token_bitmask_kernel,
            {
                "logits_ptr": ptr_sig(dt),
                "mask_ptr": "*i32",
                "vocab": "i32",
                "words": "i32",
                "stride_logits": "i64",
                "stride_mask": "i64",
            },
            {"BLOCK": CONFIG.block, "INTERPRET": False},
            num_warps=CONFIG.num_warps,
            label=f"BLOCK={CONFIG.block} {dt}",
        )
        for dt in FLOAT_DTYPES
    ]
