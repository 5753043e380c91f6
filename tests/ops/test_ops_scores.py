"""Importance scores: recomputed query rows equal a naive full attention; other signals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ops_references as ref
from deos_dsl.ops import (LearnedScorer, Regime, attention_from_query, bipartite_scores, hidden_norm, random_order, relaxed_reduce,
                          text_similarity)

torch.set_num_threads(1)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("rows", [[0], [-1], [9, 10, 11]])
def test_attention_from_query_rows_equal_naive_attention(causal, rows):
    b, h, n, dh = 2, 4, 12, 8
    q, k = rand(b, h, n, dh, seed=1), rand(b, h, n, dh, seed=2)
    probs = ref.naive_attention_probs(q, k, causal=causal)
    rows_t = torch.tensor(rows) % n
    want = probs[:, :, rows_t].mean(dim=(1, 2))
    got = attention_from_query(q[:, :, rows_t], k, query_positions=rows_t if causal else None)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(b, dtype=torch.float64))


def test_attention_from_query_in_a_fused_sdpa_block():
    """A block that uses fused SDPA never materialises attention; recomputing the last
    query row from its q/k projections gives the naive model's last-token attention."""
    b, n, d, h = 2, 10, 16, 4
    x = rand(b, n, d, seed=3)
    wq, wk = rand(d, d, seed=4), rand(d, d, seed=5)
    split = lambda t: t.reshape(b, n, h, d // h).transpose(1, 2)
    q, k = split(x @ wq), split(x @ wk)
    out = F.scaled_dot_product_attention(q, k, split(x), is_causal=True)  # what the model runs
    assert out.shape == (b, h, n, d // h)
    last = (x[:, -1:] @ wq).reshape(b, 1, h, d // h).transpose(1, 2)  # one recomputed row
    got = attention_from_query(last, k, query_positions=torch.tensor([n - 1]))
    want = ref.naive_attention_probs(q, k, causal=True)[:, :, -1].mean(dim=1)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_grouped_query_heads_and_key_bias():
    b, n, dh = 1, 6, 4
    q, k = rand(b, 4, 1, dh, seed=6), rand(b, 2, n, dh, seed=7)
    bias = rand(b, n, seed=8)
    got = attention_from_query(q, k, key_bias=bias)
    kk = k.repeat_interleave(2, dim=1)
    want = torch.softmax(q @ kk.transpose(-1, -2) / dh**0.5 + bias[:, None, None], dim=-1).mean(dim=(1, 2))
    torch.testing.assert_close(got, want)


def test_norm_and_text_similarity():
    x, text = rand(2, 5, 3, seed=9), rand(2, 4, 3, seed=10)
    torch.testing.assert_close(hidden_norm(x), x.pow(2).sum(-1).sqrt())
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    got = text_similarity(x, text, mask)
    mean0 = text[0, :2].mean(0)
    torch.testing.assert_close(got[0], F.cosine_similarity(x[0], mean0[None], dim=-1))
    torch.testing.assert_close(got[1], F.cosine_similarity(x[1], text[1].mean(0)[None], dim=-1))


def test_bipartite_scores_rank_b_first_and_most_redundant_a_last():
    f = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]], dtype=torch.float64)
    a_set = torch.tensor([True, False, True, False])
    s = bipartite_scores(f, a_set)
    assert s[0, 1] == 2.0 and s[0, 3] == 2.0
    torch.testing.assert_close(s[0, [0, 2]], torch.tensor([-1.0, -0.8], dtype=torch.float64))


def test_learned_scorer_gets_gradient_through_relaxed_form():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 8)
    scorer = LearnedScorer(8)
    scores = scorer(x[:, 2:])
    assert scores.shape == (2, 10)
    out = relaxed_reduce(x, range(2, 12), scores, 0.4, regime=Regime(gamma=0.5, tau=0.3), temperature=0.5, rank_temperature=0.3)
    (out.x.square().sum() + out.attn_bias.sum()).backward()
    assert scorer.proj.weight.grad.abs().sum() > 0 and scorer.norm.weight.grad.abs().sum() > 0


def test_random_order_is_a_fixed_pseudo_random_ranking_of_the_positions():
    order = random_order(576)
    assert order.shape == (576,) and len(set(order.tolist())) == 576 and 0 <= order.min() and order.max() < 1
    assert torch.equal(order, random_order(576)) and torch.equal(random_order(144), order[:144])  # a function of the position
    kept = order.topk(144).indices
    # no structure a grid baseline would share: the kept quarter spreads over every row of the 24 x 24 grid ...
    assert len(set((kept // 24).tolist())) >= 20
    # ... and ranks are uncorrelated with the position (|Spearman| small for 576 positions)
    ranks = order.argsort().argsort().double()
    positions = torch.arange(576, dtype=torch.float64)
    assert abs(float(torch.corrcoef(torch.stack([ranks, positions]))[0, 1])) < 0.1
