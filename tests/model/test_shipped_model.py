"""The default model as it ships (``LLM("default")``: the GGUF's quantized weights on the C++
kernel) against its dequantized float32 twin (the same weights decoded exactly, dense).

Bounds (README "Quantized weights"): float32 activations (the default on the CPU): perplexity
over a fixed 2,048-token text within 1% of the twin's, and the first 32 greedy tokens identical
on at least 4 of 5 chat prompts; bfloat16 activations: perplexity within 1%, greedy identical on
at least 2 of 5 (measured 3 of 5: rounding the activations moves near ties).
"""

from __future__ import annotations

import pytest
import torch

from benches.bench_quant import CHATS, perplexity, text_ids
from tests.memreport import return_free_memory
from tests.model.simple import greedy_tokens
from tritonlm.kernels.cpu_quant import CpuQuantWeight
from tritonlm.model.loader import load_model

pytestmark = pytest.mark.slow

TEXT_TOKENS = 2048
GREEDY_TOKENS = 32
BOUNDS = {"float32": (0.01, 4), "bfloat16": (0.01, 2)}  # activations -> (perplexity rel. error, greedy of 5)


def _first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def _prompt(tok, question: str) -> list[int]:
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True))


@pytest.fixture(scope="module")
def twin_reference(default_model_f32) -> dict:
    """The twin's perplexity over the text and greedy tokens per chat, computed once for both cases."""
    twin, tok = default_model_f32.model, default_model_f32.tokenizer
    ids = text_ids(tok)[:TEXT_TOKENS]
    greedy = {q: list(greedy_tokens(twin, _prompt(tok, q), GREEDY_TOKENS)) for q in CHATS}
    return {"ids": ids, "perplexity": perplexity(twin, ids), "greedy": greedy}


@pytest.mark.parametrize("activations", ["float32", "bfloat16"])
def test_shipped_model_tracks_its_dequantized_float32_twin(twin_reference, activations: str) -> None:
    # dtype "auto" is float32 on the CPU: the first case is exactly what LLM("default") loads
    shipped = load_model("default", dtype="auto" if activations == "float32" else activations)
    try:
        model = shipped.model
        assert model.dtype == getattr(torch, activations)
        # the C++ kernel's packed layout, not the torch reference (which would pass trivially)
        for lw in model.layers:
            assert isinstance(lw.qkv_weight, CpuQuantWeight) and isinstance(lw.down_weight, CpuQuantWeight)
        tok = shipped.tokenizer
        ids = twin_reference["ids"]
        assert len(ids) == TEXT_TOKENS and text_ids(tok)[:TEXT_TOKENS] == ids
        ppl, ppl_twin = perplexity(model, ids), twin_reference["perplexity"]
        rel_bound, min_same = BOUNDS[activations]
        report = [f"{activations}: perplexity {ppl:.4f} vs twin {ppl_twin:.4f} (ratio {ppl / ppl_twin:.4f})"]
        same = 0
        for question in CHATS:
            ours = list(greedy_tokens(model, _prompt(tok, question), GREEDY_TOKENS))
            theirs = twin_reference["greedy"][question]
            same += ours == theirs
            first = _first_difference(ours, theirs)
            where = "identical" if first is None else f"first difference at token {first}"
            report.append(f"  {question!r}: {where}")
        print("\n".join(report))
        assert abs(ppl / ppl_twin - 1) <= rel_bound, "\n".join(report)
        assert same >= min_same, "\n".join(report)
    finally:
        del shipped
        return_free_memory()
