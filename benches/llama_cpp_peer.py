"""llama.cpp (llama-cpp-python) as a batched greedy decoder over the same GGUF, for the benches.

The high-level ``llama_cpp.Llama`` decodes one sequence at a time, so batch B would be B
sequential calls. This drives the low-level API the way llama.cpp's own ``batched`` example
does: one context with ``n_seq_max`` sequences and a unified KV cache, every prompt prefilled
in one ``llama_decode``, then one ``llama_decode`` per step carrying one token of each sequence.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class LlamaCppBatched:
    def __init__(self, gguf_path: str | Path, *, n_ctx: int = 4096, n_seq_max: int = 32, n_threads: int | None = None):
        import llama_cpp as lc

        self._lc = lc
        lc.llama_backend_init()
        model_params = lc.llama_model_default_params()
        self._model = lc.llama_model_load_from_file(str(gguf_path).encode(), model_params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        threads = n_threads or os.cpu_count() or 1
        ctx_params = lc.llama_context_default_params()
        ctx_params.n_ctx = n_ctx
        ctx_params.n_batch = n_ctx
        ctx_params.n_ubatch = 512
        ctx_params.n_seq_max = n_seq_max
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx_params.kv_unified = True
        self._ctx = lc.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self._n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self._model))
        self._n_seq_max = n_seq_max
        self._batch = lc.llama_batch_init(n_ctx, 0, n_seq_max)

    def close(self) -> None:
        lc = self._lc
        lc.llama_batch_free(self._batch)
        lc.llama_free(self._ctx)
        lc.llama_model_free(self._model)

    def _add(self, token: int, pos: int, seq: int, want_logits: bool) -> int:
        b = self._batch
        i = b.n_tokens
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = want_logits
        b.n_tokens = i + 1
        return i

    def _argmax(self, row: int) -> int:
        import numpy as np

        logits = self._lc.llama_get_logits_ith(self._ctx, row)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(self._n_vocab,))))

    def generate(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        """Greedy ``new_tokens`` tokens for each prompt (no EOS stop), all sequences together."""
        lc = self._lc
        if len(prompts) > self._n_seq_max:
            raise ValueError(f"at most {self._n_seq_max} sequences")
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        self._batch.n_tokens = 0
        rows = []
        for seq, ids in enumerate(prompts):
            for pos, token in enumerate(ids):
                row = self._add(token, pos, seq, pos == len(ids) - 1)
            rows.append(row)
        if lc.llama_decode(self._ctx, self._batch) != 0:
            raise RuntimeError("llama_decode failed on the prompts")
        outputs: list[list[int]] = [[] for _ in prompts]
        positions = [len(ids) for ids in prompts]
        for step in range(new_tokens):
            tokens = [self._argmax(row) for row in rows]
            for seq, token in enumerate(tokens):
                outputs[seq].append(token)
            if step == new_tokens - 1:
                break
            self._batch.n_tokens = 0
            rows = [self._add(token, positions[seq], seq, True) for seq, token in enumerate(tokens)]
            positions = [p + 1 for p in positions]
            if lc.llama_decode(self._ctx, self._batch) != 0:
                raise RuntimeError("llama_decode failed")
        return outputs


def llama_cpp_tokens_per_s(peer: LlamaCppBatched, prompts: list[list[int]], new_tokens: int) -> float:
    """Completion tokens/s of one batched greedy generation (prefill included)."""
    start = time.perf_counter()
    outputs = peer.generate(prompts, new_tokens)
    elapsed = time.perf_counter() - start
    return sum(len(o) for o in outputs) / elapsed
