"""Token sampling for a whole batch (torch; runs next to the model runner).

Order of transforms on each row: penalties (repetition on prompt + output, presence and
frequency on the output) -> greedy argmax, or temperature -> top-k -> softmax -> min-p ->
top-p -> one draw. The draw inverts the row's CDF at one uniform number that is a hash of the
request's sampling seed and the position of the token being drawn, so a seeded request yields
the same tokens whatever shares its batch, and again after being preempted and recomputed.

Logprobs are those of the model's distribution after the grammar mask, before penalties and
temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tritonlm.runtime.outputs import TokenLogprob
from tritonlm.runtime.request import Request

_MASK64 = (1 << 63) - 1


def draw_seed(sampling_seed: int, position: int) -> int:
    """The generator seed for the token at ``position`` of a request (a 63-bit mix)."""
    x = (sampling_seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & _MASK64
    return x ^ (x >> 29)


def draw_uniform(sampling_seed: int, position: int) -> float:
    """A uniform number in [0, 1) that depends only on the request's seed and the position."""
    return (draw_seed(sampling_seed, position) >> 10) / float(1 << 53)


@dataclass
class SamplerOutput:
    token_ids: list[int]  # one per row
    logprobs: list[TokenLogprob | None]


class Sampler:
    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, requests: Sequence[Request]) -> SamplerOutput:
        """``logits [N, V]`` float32, row ``i`` for ``requests[i]``; mutated (penalties)."""
        num_rows = logits.shape[0]
        if num_rows == 0:
            return SamplerOutput([], [])
        logprob_rows = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
        raw_logprobs = None
        if logprob_rows:
            raw_logprobs = torch.log_softmax(logits[logprob_rows], dim=-1)

        for i, request in enumerate(requests):
            if request.params.has_penalties:
                apply_penalties(logits[i], request)

        tokens = torch.empty(num_rows, dtype=torch.int64)
        greedy = [i for i, r in enumerate(requests) if r.params.greedy]
        sampled = [i for i, r in enumerate(requests) if not r.params.greedy]
        if greedy:
            tokens[greedy] = logits[greedy].argmax(dim=-1).cpu()
        if sampled:
            tokens[sampled] = sample_rows(logits[sampled], [requests[i] for i in sampled]).cpu()
        token_list = tokens.tolist()

        logprobs: list[TokenLogprob | None] = [None] * num_rows
        if raw_logprobs is not None:
            for j, i in enumerate(logprob_rows):
                row = raw_logprobs[j]
                k = requests[i].params.logprobs or 0
                top: tuple[tuple[int, float], ...] = ()
                if k:
                    values, ids = row.topk(k)
                    top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
                logprobs[i] = TokenLogprob(token_list[i], float(row[token_list[i]]), top)
        return SamplerOutput(token_list, logprobs)


def apply_penalties(row: torch.Tensor, request: Request) -> None:
    """Penalise ``row [V]`` in place: repetition over prompt + output, presence / frequency over the output."""
    params = request.params
    device = row.device
    if params.repetition_penalty != 1:
        seen = torch.tensor(sorted(set(request.token_ids)), dtype=torch.int64, device=device)
        values = row[seen]
        p = params.repetition_penalty
        row[seen] = torch.where(values > 0, values / p, values * p)
    if params.presence_penalty or params.frequency_penalty:
        output = request.output_token_ids
        if output:
            counts = torch.bincount(torch.tensor(output, dtype=torch.int64, device=device), minlength=row.shape[0]).to(
                row.dtype
            )
            row -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(row.dtype)


def sample_rows(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
    """One random token per row of ``logits [M, V]`` (all rows have temperature > 0)."""
    _num_rows, vocab = logits.shape
    device = logits.device
    params = [r.params for r in requests]
    temps = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device)
    x = logits / temps[:, None]

    top_ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    if any(top_ks):
        k_max = max(top_ks)
        top_values = x.topk(k_max, dim=-1).values  # [M, k_max] descending
        ks = torch.tensor([k or k_max for k in top_ks], dtype=torch.int64, device=device)
        threshold = top_values.gather(1, (ks - 1)[:, None])
        threshold[torch.tensor([k == 0 for k in top_ks], device=device)] = float("-inf")
        x = x.masked_fill(x < threshold, float("-inf"))

    probs = torch.softmax(x, dim=-1)
    min_ps = [p.min_p for p in params]
    if any(min_ps):
        min_p = torch.tensor(min_ps, dtype=torch.float32, device=device)[:, None]
        probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)

    top_ps = [p.top_p for p in params]
    if any(tp < 1 for tp in top_ps):
        top_p = torch.tensor(top_ps, dtype=torch.float32, device=device)[:, None]
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always the first token)
        drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs)

    # inverse-CDF draw: the first token whose cumulative mass exceeds u * total
    cdf = probs.double().cumsum(dim=-1)
    uniforms = torch.tensor([draw_uniform(r.sampling_seed, r.num_tokens) for r in requests], dtype=torch.float64)
    targets = uniforms.to(device)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, targets, right=True).squeeze(1).clamp_(max=vocab - 1)


__all__ = ["Sampler", "SamplerOutput", "TokenLogprob", "apply_penalties", "draw_seed", "draw_uniform", "sample_rows"]
