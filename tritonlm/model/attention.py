"""Per-step attention metadata: how the packed tokens of one forward map onto the paged KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Tensors built once per step by the model runner and shared by every layer.

    ``T`` packed new tokens belong to ``B`` sequences. The same path serves prefill, chunked
    prefill and decode: a sequence contributes ``q_len = cu_seqlens_q[b+1] - cu_seqlens_q[b]``
    new tokens, and after them holds ``context_lens[b]`` tokens in the cache.
    """

    slot_mapping: torch.Tensor  # [T] int64 flat cache slot of each new token; -1 = padding, not stored
    block_tables: torch.Tensor  # [B, max_blocks] int32 block ids; entries past a sequence's blocks unused
    context_lens: torch.Tensor  # [B] int32 cached tokens after this step's tokens are stored
    cu_seqlens_q: torch.Tensor  # [B + 1] int32 offsets of each sequence's new tokens in the batch
    max_query_len: int
    # the first num_decode_seqs sequences add one token each; in a mixed batch they take the
    # batched decode op and only the rest go through prefill attention
    num_decode_seqs: int = 0

    @property
    def is_decode(self) -> bool:
        """Every sequence adds exactly one token (the decode kernel applies)."""
        return self.max_query_len == 1

    @property
    def num_seqs(self) -> int:
        return int(self.context_lens.shape[0])

    @staticmethod
    def build(
        query_lens: list[int],
        context_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
        device: torch.device | str = "cpu",
    ) -> AttentionMetadata:
        """Metadata for sequences adding ``query_lens[b]`` tokens, ending at ``context_lens[b]``.

        ``block_tables[b]`` must cover positions ``0 .. context_lens[b] - 1``.
        """
        slots: list[int] = []
        for q_len, ctx, table in zip(query_lens, context_lens, block_tables, strict=True):
            if q_len > ctx or len(table) * block_size < ctx:
                raise ValueError(f"bad sequence: q_len={q_len} context_len={ctx} blocks={len(table)}")
            for pos in range(ctx - q_len, ctx):
                slots.append(table[pos // block_size] * block_size + pos % block_size)
        width = max((len(t) for t in block_tables), default=1) or 1
        tables = torch.zeros(len(block_tables), width, dtype=torch.int32)
        for b, table in enumerate(block_tables):
            if table:
                tables[b, : len(table)] = torch.tensor(table, dtype=torch.int32)
        cu = [0]
        for q_len in query_lens:
            cu.append(cu[-1] + q_len)
        return AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
            block_tables=tables.to(device),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
            max_query_len=max(query_lens, default=0),
        )


@dataclass
class KVCache:
    """The paged KV cache of every layer: ``k[layer]``, ``v[layer]`` are ``[num_blocks, block_size, Hk, D]``."""

    k: torch.Tensor  # [L, num_blocks, block_size, Hk, D]
    v: torch.Tensor

    @property
    def num_blocks(self) -> int:
        return int(self.k.shape[1])

    @property
    def block_size(self) -> int:
        return int(self.k.shape[2])

    @staticmethod
    def allocate(
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        # uninitialised: every op reads only slots written before (the kernel tests fill the rest
        # with NaN), and on the CPU the pages of a large cache are then only resident once used
        return KVCache(
            k=torch.empty(shape, dtype=dtype, device=device), v=torch.empty(shape, dtype=dtype, device=device)
        )

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * block_size * num_kv_heads * head_dim * itemsize
