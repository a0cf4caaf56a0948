"""The model runner: owns the paged KV cache and every tensor of a step.

Given the scheduler's ``{request_id: num_tokens}``, it packs the new tokens of all scheduled
requests into one forward (prefill, chunked prefill and decode alike) and returns the logits
of the last token of each request whose step reaches the end of its known tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tritonlm.model.attention import AttentionMetadata, KVCache
from tritonlm.model.qwen2 import Qwen2ForCausalLM
from tritonlm.runtime.block_manager import BlockManager
from tritonlm.runtime.config import EngineConfig, KVCachePlan, max_blocks_needed, plan_kv_cache
from tritonlm.runtime.scheduler import SchedulerOutput

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


def available_memory_bytes(device: torch.device) -> int:
    """Free memory of the device: ``MemAvailable`` on the CPU, the free CUDA memory on a GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def num_kv_blocks(
    model: Qwen2ForCausalLM,
    block_size: int,
    *,
    kv_cache_bytes: int | None,
    kv_cache_fraction: float,
    max_blocks: int | None = None,
) -> int:
    """How many blocks the cache gets: ``kv_cache_bytes``, else ``kv_cache_fraction`` of free memory,
    at most ``max_blocks``."""
    c = model.config
    assert c.head_dim is not None  # resolved by Qwen2Config
    per_block = KVCache.bytes_per_block(c.num_hidden_layers, block_size, c.num_key_value_heads, c.head_dim, model.dtype)
    budget = (
        kv_cache_bytes if kv_cache_bytes is not None else int(available_memory_bytes(model.device) * kv_cache_fraction)
    )
    blocks = budget // per_block
    if max_blocks is not None:
        blocks = min(blocks, max_blocks)
    return int(blocks)


def size_kv_cache(model: Qwen2ForCausalLM, config: EngineConfig) -> KVCachePlan:
    """The KV cache ``config`` asks for on this model and device (see :class:`EngineConfig`)."""
    context = model.config.max_position_embeddings
    blocks_that_fit = None
    if config.num_kv_blocks is None:
        blocks_that_fit = num_kv_blocks(
            model,
            config.block_size,
            kv_cache_bytes=config.kv_cache_bytes,
            kv_cache_fraction=config.kv_cache_fraction,
            max_blocks=max_blocks_needed(config, context),
        )
    return plan_kv_cache(config, context, blocks_that_fit)


class ModelRunner:
    """Owns the KV cache and every tensor of a step: packs a batch, runs the forward, returns
    the sampling rows' logits, and masks them by a grammar bitmask."""

    def __init__(self, model: Qwen2ForCausalLM, block_manager: BlockManager) -> None:
        self.model = model
        self.block_size = block_manager.block_size
        self.block_manager = block_manager
        self.kv_cache = model.allocate_kv_cache(block_manager.num_blocks, block_manager.block_size)
        self.device = model.device

    def prepare(self, batch: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """Packed ``input_ids [T]``, ``positions [T]``, the attention metadata, and the row
        (in ``[T]``) of each sampling request's last token, in batch order."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        context_lens: list[int] = []
        cu_seqlens = [0]
        tables: list[list[int]] = []
        last_row: dict[str, int] = {}
        # one-token sequences first: in a mixed batch they take the batched decode attention
        scheduled = batch.num_scheduled_tokens
        order = [rid for rid, n in scheduled.items() if n == 1] + [rid for rid, n in scheduled.items() if n > 1]
        num_decode_seqs = sum(1 for n in scheduled.values() if n == 1)
        for request_id in order:
            num_new = scheduled[request_id]
            request = batch.requests[request_id]
            table = self.block_manager.block_table(request_id)
            start = request.num_computed_tokens
            end = start + num_new
            input_ids.extend(request.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            context_lens.append(end)
            cu_seqlens.append(cu_seqlens[-1] + num_new)
            tables.append(table)
            last_row[request_id] = cu_seqlens[-1] - 1
        sample_rows = [last_row[r.request_id] for r in batch.sampling_requests()]
        width = max(self.block_manager.blocks_for(n) for n in context_lens)
        padded = [t[:width] + [0] * (width - len(t[:width])) for t in tables]
        device = self.device
        attn = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
            block_tables=torch.tensor(padded, dtype=torch.int32, device=device),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
            cu_seqlens_q=torch.tensor(cu_seqlens, dtype=torch.int32, device=device),
            max_query_len=max(scheduled.values()),
            num_decode_seqs=num_decode_seqs,
        )
        return (
            torch.tensor(input_ids, dtype=torch.int64, device=device),
            torch.tensor(positions, dtype=torch.int64, device=device),
            attn,
            sample_rows,
        )

    @torch.inference_mode()
    def execute(self, batch: SchedulerOutput) -> torch.Tensor:
        """Run one forward; stores the new tokens' k/v. Returns float32 logits ``[N, V]``, one row
        per request that samples this step (:meth:`SchedulerOutput.sampling_requests` order)."""
        input_ids, positions, attn, sample_rows = self.prepare(batch)
        hidden = self.model.forward(input_ids, positions, attn, self.kv_cache)
        if not sample_rows:
            return torch.empty(0, self.model.config.vocab_size, dtype=torch.float32, device=self.device)
        rows = torch.tensor(sample_rows, dtype=torch.int64, device=self.device)
        packed = self.model.uses_packed_matmul(attn)
        return self.model.compute_logits(hidden.index_select(0, rows), packed=packed)

    @torch.inference_mode()
    def apply_token_bitmask(self, logits: torch.Tensor, rows: list[int], bitmask: NDArray[np.int32]) -> None:
        """Set ``logits[rows[j], t]`` to -inf, in place, where bit ``t`` of ``bitmask[j]`` is 0
        (``bitmask [len(rows), ceil(V / 32)]`` int32)."""
        sub = logits[rows]
        self.model.ops.apply_token_bitmask(sub, torch.from_numpy(bitmask).to(logits.device))
        logits[rows] = sub
