"""Per-row sampling with counter-based noise: never outside top-k/top-p, whatever the draw;
the right distribution; the same tokens whichever path (top-k or full sort) a batch takes."""
from __future__ import annotations

import pytest
import torch

from models.sampling import (
    SamplingParams,
    hash32,
    hash32_int,
    sample_tokens,
    step_keys,
    token_hashes,
    uniforms,
    window_key,
)

CARD = 64
K = 4


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, K, CARD, generator=torch.Generator().manual_seed(seed)) * 3


def _row_params(rows: int, top_k=0, top_p=0.0, temperature=1.0):
    return dict(temperature=torch.full((rows,), temperature), top_k=torch.full((rows,), top_k),
                top_p=torch.full((rows,), top_p))


def _keys(rows: int, step: int = 0) -> torch.Tensor:
    windows = torch.tensor([window_key(seed, 0) for seed in range(rows)])
    return step_keys(windows, torch.full((rows,), step))


@pytest.mark.parametrize("edge", [0.0, 1.0, 1 - 2 ** -24])
@pytest.mark.parametrize("cut", [dict(top_k=5), dict(top_p=0.3), dict(top_k=1)])
def test_a_draw_never_leaves_the_kept_tokens_whatever_the_noise(edge, cut):
    """With a uniform of exactly 0 the old `-log1p(-u)` made a discarded token's score 0/0 =
    NaN, and argmax picked it. Now discarded tokens score -1 under any noise."""
    rows = 6
    logits = _logits(rows)
    params = _row_params(rows, **cut)
    hashes = token_hashes(K, CARD, "cpu")
    candidates = CARD if "top_p" in cut else cut["top_k"]
    tokens = sample_tokens(logits, keys=_keys(rows), hashes=hashes, candidates=candidates,
                           noise=lambda keys, h: torch.full(h.shape, edge), **params)
    probs = torch.softmax(logits, -1)
    if "top_k" in cut:
        allowed = probs.topk(cut["top_k"], dim=-1).indices
        assert (allowed == tokens.unsqueeze(-1)).any(-1).all()
    else:
        order = probs.sort(-1, descending=True)
        kept = (order.values.cumsum(-1) - order.values) <= cut["top_p"]
        chosen_rank = (order.indices == tokens.unsqueeze(-1)).float().argmax(-1)
        assert kept.gather(-1, chosen_rank.unsqueeze(-1)).all()


def test_noise_lies_strictly_inside_the_unit_interval_and_is_a_pure_function():
    hashes = token_hashes(K, CARD, "cpu")
    keys = _keys(8, step=3)
    u = uniforms(keys, hashes.unsqueeze(0).expand(8, -1, -1))
    assert (u > 0).all() and (u < 1).all()
    assert torch.equal(u, uniforms(keys, hashes.unsqueeze(0).expand(8, -1, -1)))
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    # a different step, window or seed gives a different stream
    assert not torch.equal(u, uniforms(_keys(8, step=4), hashes.unsqueeze(0).expand(8, -1, -1)))
    assert window_key(1, 0) != window_key(1, 1) != window_key(2, 1)
    assert window_key(2 ** 40, 0) != window_key(0, 0)  # the seed's high half counts


def test_the_host_and_device_hashes_are_the_same_function():
    values = [0, 1, 2, 12345, 2 ** 31, 2 ** 32 - 1, 0xDEADBEEF]
    assert hash32(torch.tensor(values)).tolist() == [hash32_int(v) for v in values]


def test_sampled_frequencies_follow_the_distribution():
    """One row, many steps: token frequencies within 4 standard errors of the probabilities
    (top-k 8 at temperature 1.3)."""
    logits = _logits(1, seed=3)[:, :1]  # [1, 1, CARD]
    params = _row_params(1, top_k=8, temperature=1.3)
    hashes = token_hashes(1, CARD, "cpu")
    draws = 6000
    keys = step_keys(torch.full((draws,), window_key(7, 0)), torch.arange(draws))
    tokens = sample_tokens(logits.expand(draws, -1, -1),
                           temperature=params["temperature"].expand(draws),
                           top_k=params["top_k"].expand(draws), top_p=params["top_p"].expand(draws),
                           keys=keys, hashes=hashes, candidates=8)[:, 0]
    probs = torch.softmax(logits[0, 0] / 1.3, -1)
    top = probs.topk(8)
    expected = top.values / top.values.sum()
    counts = torch.bincount(tokens, minlength=CARD).float()
    assert counts.sum() == draws and counts[top.indices].sum() == draws
    observed = counts[top.indices] / draws
    stderr = (expected * (1 - expected) / draws).sqrt()
    assert ((observed - expected).abs() <= 4 * stderr + 1e-3).all()


def test_topk_and_full_sort_paths_pick_the_same_tokens():
    """A row's draw does not depend on how many candidates its batch looks at (its
    neighbours' parameters decide that)."""
    rows = 5
    logits = _logits(rows, seed=9)
    params = _row_params(rows, top_k=12, temperature=0.8)
    hashes = token_hashes(K, CARD, "cpu")
    keys = _keys(rows, step=17)
    narrow = sample_tokens(logits, keys=keys, hashes=hashes, candidates=12, **params)
    wide = sample_tokens(logits, keys=keys, hashes=hashes, candidates=40, **params)
    full = sample_tokens(logits, keys=keys, hashes=hashes, candidates=CARD, **params)
    assert torch.equal(narrow, wide) and torch.equal(narrow, full)


def test_candidates_and_greedy_rows():
    assert SamplingParams(top_k=1).candidates(CARD) == 1
    assert SamplingParams(temperature=0.0, top_k=50).candidates(CARD) == 1
    assert SamplingParams(top_k=50).candidates(CARD) == 50
    assert SamplingParams(top_k=0).candidates(CARD) == CARD
    assert SamplingParams(top_k=50, top_p=0.9).candidates(CARD) == CARD
    assert SamplingParams(top_k=5000).candidates(CARD) == CARD
    logits = _logits(2)
    params = dict(temperature=torch.tensor([0.0, 1.0]), top_k=torch.tensor([50, 1]),
                  top_p=torch.zeros(2))
    tokens = sample_tokens(logits, keys=_keys(2), hashes=token_hashes(K, CARD, "cpu"),
                           candidates=50, **params)
    assert torch.equal(tokens, logits.argmax(-1))
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=-1).validate(CARD)
