"""The sampler against naive per-row references: greedy, temperature, top-k, top-p, min-p,
penalties, seeds, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from tritonlm.runtime.request import Request
from tritonlm.runtime.sampler import Sampler
from tritonlm.runtime.sampling_params import SamplingParams


def _req(params: SamplingParams, seed: int = 0, tokens: list[int] | None = None, prompt_len: int = 1) -> Request:
    tokens = tokens or [0]
    return Request(
        request_id="r",
        group_id="r",
        index=0,
        token_ids=list(tokens),
        num_prompt_tokens=prompt_len,
        params=params,
        sampling_seed=seed,
        arrival_order=0,
        max_total_tokens=1000,
    )


def _frequencies(logits: torch.Tensor, params: SamplingParams, draws: int = 4000) -> torch.Tensor:
    sampler = Sampler()
    counts = torch.zeros(logits.shape[0])
    for seed in range(draws // 200):
        # 200 rows of the same distribution, each with its own seed: one batched call
        reqs = [_req(params, seed=seed * 1000 + i) for i in range(200)]
        out = sampler(logits.repeat(200, 1), reqs)
        counts += torch.bincount(torch.tensor(out.token_ids), minlength=logits.shape[0]).float()
    return counts / counts.sum()


LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, 1.2])


def _expected(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> torch.Tensor:
    """Naive reference: filter with python loops over sorted tokens."""
    probs = torch.softmax(logits / temperature, dim=-1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    keep = set(order[:top_k]) if top_k else set(order)
    if min_p:
        keep = {i for i in keep if probs[i] >= min_p * max(probs)}
    kept = [i for i in order if i in keep]
    total = sum(probs[i] for i in kept)
    mass, chosen = 0.0, []
    for i in kept:
        if mass >= top_p * total:
            break
        chosen.append(i)
        mass += probs[i]
    out = torch.zeros(len(probs))
    for i in chosen:
        out[i] = probs[i]
    return out / out.sum()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 1.0},
        {"temperature": 0.5},
        {"temperature": 1.0, "top_k": 3},
        {"temperature": 1.0, "top_p": 0.6},
        {"temperature": 2.0, "min_p": 0.3},
        {"temperature": 1.0, "top_k": 5, "top_p": 0.8, "min_p": 0.05},
    ],
)
def test_sampling_distribution_matches_the_naive_reference(kwargs) -> None:
    freq = _frequencies(LOGITS, SamplingParams(**kwargs))
    expected = _expected(LOGITS, **kwargs)
    assert torch.all(freq[expected == 0] == 0), "a filtered-out token was sampled"
    assert torch.allclose(freq, expected, atol=0.03), (freq, expected)


def test_greedy_and_degenerate_filters_give_the_argmax() -> None:
    sampler = Sampler()
    logits = torch.randn(6, 1000, generator=torch.Generator().manual_seed(0))
    params = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=0.7, top_p=1e-6),
        SamplingParams(temperature=5.0, min_p=1.0),
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, top_k=1, seed=3),
    ]
    out = sampler(logits.clone(), [_req(p, seed=i) for i, p in enumerate(params)])
    assert out.token_ids == logits.argmax(dim=-1).tolist()


def test_rows_do_not_depend_on_their_batch() -> None:
    sampler = Sampler()
    logits = torch.randn(5, 3000, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=0.9, top_k=100, top_p=0.95, seed=7)
    reqs = [_req(params, seed=100 + i) for i in range(5)]
    together = sampler(logits.clone(), reqs).token_ids
    alone = [sampler(logits[i : i + 1].clone(), [reqs[i]]).token_ids[0] for i in range(5)]
    assert together == alone
    # the draw depends on the position too: a later token of the same request differs in general
    moved = [_req(params, seed=100 + i, tokens=[0] * 9) for i in range(5)]
    assert sampler(logits.clone(), moved).token_ids != together


def test_penalties_match_the_formulas() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]])
    # prompt [0, 1], output [3, 3, 2]
    req = _req(
        SamplingParams(temperature=0, repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25),
        tokens=[0, 1, 3, 3, 2],
        prompt_len=2,
    )
    row = logits.clone()
    from tritonlm.runtime.sampler import apply_penalties

    apply_penalties(row[0], req)
    expected = [2.0 / 2, -1.0 * 2, 0.5 / 2 - 0.5 - 0.25, 3.0 / 2 - 0.5 - 0.5, -2.0]
    assert row[0].tolist() == pytest.approx(expected)


def test_logprobs_are_of_the_raw_distribution() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    out = Sampler()(logits.clone(), [_req(SamplingParams(temperature=0.5, logprobs=2, seed=1))])
    lp = torch.log_softmax(logits[0], dim=-1)
    entry = out.logprobs[0]
    assert entry is not None and entry.token_id == out.token_ids[0]
    assert entry.logprob == pytest.approx(float(lp[entry.token_id]))
    assert [t for t, _ in entry.top] == [1, 2]
    assert entry.top[0][1] == pytest.approx(float(lp[1]))
    assert math.isclose(sum(math.exp(v) for v in lp.tolist()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"max_tokens": 0},
        {"temperature": -1},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": -2},
        {"min_p": 2},
        {"presence_penalty": 3},
        {"repetition_penalty": 0},
        {"seed": 1.5},
        {"stop": [""]},
        {"logprobs": -1},
        {"regex": "a", "choice": ["b"]},
        {"temperature": float("nan")},
        {"n": True},
    ],
)
def test_nonsense_sampling_params_raise_config_error(kwargs) -> None:
    from tritonlm.errors import ConfigError

    with pytest.raises(ConfigError):
        SamplingParams(**kwargs)


def test_sampling_params_normalise_lists() -> None:
    p = SamplingParams(stop=["a", "b"], stop_token_ids=[1], choice=["x", "y"])
    assert p.stop == ("a", "b") and p.stop_token_ids == (1,) and p.choice == ("x", "y")
    assert SamplingParams(stop="end").stop == ("end",)
