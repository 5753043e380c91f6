"""Relaxed form: gradients w.r.t. every parameter, hard limit at T -> 0, gate, masks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

from deos_dsl.ops import NEG_BIAS, Regime, recycle_mask, reduce_tokens, relaxed_reduce, removed_last

torch.set_num_threads(1)
B, N, D = 2, 8, 3
V = range(1, 7)  # tokens 0 and 7 are protected


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


X = rand(B, N, D, seed=1)
SCORES = rand(B, 6, seed=2).abs() + 0.1
FEATS = rand(B, 6, 4, seed=3)
BASE = dict(keep=0.45, gate=0.8, gamma=0.6, log_tau=math.log(0.3), rho=0.4, nu=0.7, theta=0.6)


def outputs(keep, gate, gamma, log_tau, rho, nu, theta, scores=SCORES, x=X, feats=FEATS, incoming="sum"):
    regime = Regime(gamma=gamma, tau=torch.exp(log_tau), rho=rho, nu=nu, theta=theta, proportional=True, incoming=incoming)
    r = relaxed_reduce(x, V, scores, keep, regime=regime, gate=gate, temperature=0.7, rank_temperature=0.5, features=feats)
    return r.x, r.mask, r.attn_bias, r.sizes


@pytest.mark.parametrize("name", list(BASE))
def test_gradcheck_each_parameter(name):
    values = {k: torch.tensor(v, dtype=torch.float64) for k, v in BASE.items()}
    values[name].requires_grad_(True)

    def fn(p):
        return outputs(**{**values, name: p})

    assert gradcheck(fn, (values[name],), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["scores", "x", "feats"])
def test_gradcheck_inputs(name):
    """Scores get a gradient through the soft ranks (learned scorer), x and F directly."""
    values = {k: torch.tensor(v, dtype=torch.float64) for k, v in BASE.items()}
    inputs = {"scores": SCORES, "x": X, "feats": FEATS}
    t = inputs[name].clone().requires_grad_(True)
    assert gradcheck(lambda p: outputs(**values, **{name: p}), (t,), eps=1e-6, atol=1e-5)


def test_gradcheck_incoming_mean_and_per_example_params():
    values = {k: torch.tensor(v, dtype=torch.float64) for k, v in BASE.items()}
    gamma = torch.tensor([0.3, 0.9], dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([0.4, 0.6], dtype=torch.float64, requires_grad=True)
    fn = lambda g, c: outputs(**{**values, "gamma": g, "keep": c, "incoming": "mean"})
    assert gradcheck(fn, (gamma, keep), eps=1e-6, atol=1e-5)


def attention_block(x, bias, seed=5):
    """A tiny pre-norm transformer block whose attention takes an additive key bias."""
    g = torch.Generator().manual_seed(seed)
    d = x.shape[-1]
    wq, wk, wv, wo = (torch.randn(d, d, generator=g, dtype=x.dtype) / d**0.5 for _ in range(4))
    w1, w2 = torch.randn(d, 4 * d, generator=g, dtype=x.dtype) / d**0.5, torch.randn(4 * d, d, generator=g, dtype=x.dtype) / (2 * d**0.5)
    h = F.layer_norm(x, (d,))
    att = torch.softmax((h @ wq) @ (h @ wk).transpose(1, 2) / d**0.5 + bias[:, None, :], dim=-1)
    x = x + (att @ (h @ wv)) @ wo
    return x + F.gelu(F.layer_norm(x, (d,)) @ w1) @ w2


@pytest.mark.parametrize("regime", [
    Regime(gamma=0.3, tau=0.2, rho=0.5, nu=0.8, proportional=True),
    Regime(gamma=1.0, tau=0.0, proportional=True),
    Regime(gamma=1.0, tau=math.inf, theta=0.8),
    Regime(gamma=0.0, rho=1.0),
])
def test_relaxed_converges_to_hard_in_a_block(regime):
    """T -> 0: the relaxed output, with its key bias, drives an attention block to the same
    outputs at kept positions as the hard form (fewer tokens)."""
    b, n, d = 3, 30, 16
    x = rand(b, n, d, seed=6)
    v = range(4, 26)
    scores = rand(b, 22, seed=7).abs()
    keep = 9 / 22  # integral k = 9
    hard = reduce_tokens(x, v, scores, keep=9, regime=regime)
    want = attention_block(hard.x, hard.attn_bias)
    kept = hard.kept_idx[..., None].expand(-1, -1, d)
    errors = []
    for temperature in (0.3, 0.03, 1e-3, 0.0):
        soft = relaxed_reduce(x, v, scores, keep, regime=regime, temperature=temperature)
        got = attention_block(soft.x, soft.attn_bias).gather(1, kept)
        errors.append(float((got - want).abs().max()))
        assert torch.isfinite(soft.attn_bias).all()
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-9 and errors[3] < 1e-12
    exact = relaxed_reduce(x, v, scores, keep, regime=regime, temperature=0.0)
    torch.testing.assert_close(exact.x.gather(1, kept), hard.x, atol=1e-12, rtol=0)
    torch.testing.assert_close(exact.sizes.gather(1, hard.kept_idx), hard.sizes, atol=1e-12, rtol=0)
    assert ((exact.mask == 0) | (exact.mask == 1)).all() and int(exact.mask.sum()) == b * (8 + 9)


def test_gate_zero_is_identity_and_protected_mask_is_one():
    x = rand(2, 10, 4, seed=8, dtype=torch.float32)
    sizes = rand(2, 10, seed=9, dtype=torch.float32).abs() + 0.5
    regime = Regime(gamma=0.7, tau=0.1, rho=0.9, proportional=True)
    r = relaxed_reduce(x, range(2, 9), rand(2, 7, seed=10), 0.3, regime=regime, gate=0.0, sizes=sizes)
    assert torch.equal(r.x, x) and torch.equal(r.mask, torch.ones(2, 10)) and torch.equal(r.sizes, sizes)
    torch.testing.assert_close(r.attn_bias, sizes.log())
    r = relaxed_reduce(x, range(2, 9), rand(2, 7, seed=10), 0.3, regime=regime, gate=1.0, temperature=0.5)
    assert (r.mask[:, [0, 1, 9]] == 1).all() and torch.equal(r.x[:, [0, 1, 9]], x[:, [0, 1, 9]])
    assert ((r.mask > 0) & (r.mask < 1)).any()


def test_soft_mask_keeps_k_on_average():
    scores = rand(4, 200, seed=11)
    for c in (0.1, 0.37, 0.5):
        r = relaxed_reduce(rand(4, 200, 2, seed=12), range(200), scores, c, temperature=2.0)
        torch.testing.assert_close(r.mask.sum(dim=1), torch.full((4,), c * 200, dtype=torch.float64), atol=1e-3, rtol=0)


def test_no_nan_at_extremes():
    x = rand(2, 9, 3, seed=13)
    for tau in (1e-30, 1e30):
        for temperature in (1e-30, 0.0, 50.0):
            for gate in (0.0, 1.0):
                lt = torch.tensor(math.log(tau), dtype=torch.float64, requires_grad=True)
                c = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
                g = torch.tensor(gate, dtype=torch.float64, requires_grad=True)
                r = relaxed_reduce(x, range(9), rand(2, 9, seed=14), c, gate=g, temperature=temperature,
                                   regime=Regime(gamma=1.0, tau=lt.exp(), nu=0.5, proportional=True))
                (r.x.sum() + r.attn_bias.sum() + r.sizes.sum()).backward()
                assert all(torch.isfinite(t).all() for t in (r.x, r.attn_bias, r.sizes, lt.grad, c.grad, g.grad))
                assert r.attn_bias.min() >= NEG_BIAS


def test_fuse_has_no_relaxed_form_and_bfloat16_round_trips():
    with pytest.raises(ValueError, match="fused"):
        relaxed_reduce(X, V, SCORES, 0.5, regime=Regime(fuse=True))
    x = X.float()
    full = relaxed_reduce(x, V, SCORES.float(), 0.5, regime=Regime(gamma=0.5, tau=0.3), temperature=0.2)
    half = relaxed_reduce(x.bfloat16(), V, SCORES.bfloat16(), 0.5, regime=Regime(gamma=0.5, tau=0.3), temperature=0.2)
    assert half.x.dtype == torch.bfloat16
    torch.testing.assert_close(half.x.float(), full.x, atol=5e-2, rtol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_relaxed_on_cuda():
    c = torch.tensor(0.4, dtype=torch.float32, requires_grad=True)
    args = (X.float(), V, SCORES.float())
    cpu = relaxed_reduce(*args, c, regime=Regime(gamma=0.5, tau=0.3), temperature=0.3)
    gpu = relaxed_reduce(*(a.cuda() if torch.is_tensor(a) else a for a in args), c.cuda(), regime=Regime(gamma=0.5, tau=0.3), temperature=0.3)
    torch.testing.assert_close(gpu.x.cpu(), cpu.x, atol=1e-5, rtol=1e-5)
    gpu.x.sum().backward()
    assert torch.isfinite(c.grad)


def test_gradcheck_locality_width():
    pos = torch.arange(6, dtype=torch.float64)[:, None]
    width = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)

    def fn(w):
        regime = Regime(gamma=0.7, tau=0.4, locality=w)
        r = relaxed_reduce(X, V, SCORES, 0.5, regime=regime, temperature=0.5, features=FEATS, positions=pos)
        return r.x, r.sizes

    assert gradcheck(fn, (width,), eps=1e-6, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    n=st.integers(1, 14),
    k=st.integers(0, 14),
    gamma=st.floats(0.0, 1.0),
    tau=st.sampled_from([0.0, 0.1, 1.0, math.inf]),
    rho=st.floats(0.0, 1.0),
    nu=st.floats(0.0, 1.0),
    extras=st.sampled_from(["none", "locality", "eligible", "sizes", "mean", "weights"]),
    seed=st.integers(0, 10**6),
)
def test_relaxed_at_zero_temperature_equals_hard(b, n, k, gamma, tau, rho, nu, extras, seed):
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n + 2, 4, generator=g, dtype=torch.float64)
    v = range(1, n + 1)
    scores = torch.rand(b, n, generator=g, dtype=torch.float64)
    inputs = {"features": torch.randn(b, n, 3, generator=g, dtype=torch.float64)}
    options = {}
    if extras == "locality":
        options["locality"] = 0.5
        inputs["positions"] = torch.randn(n, 2, generator=g, dtype=torch.float64)
    elif extras == "eligible":
        inputs["dest_eligible"] = torch.rand(b, n, generator=g) < 0.5
    elif extras == "sizes":
        inputs["sizes"] = torch.rand(b, n + 2, generator=g, dtype=torch.float64) + 0.5
    elif extras == "mean":
        options["incoming"] = "mean"
    elif extras == "weights":
        inputs["source_weights"] = torch.rand(b, n, generator=g, dtype=torch.float64)
    regime = Regime(gamma=gamma, tau=tau, rho=rho, nu=nu, proportional=True, **options)
    hard = reduce_tokens(x, v, scores, keep=k, regime=regime, **inputs)
    soft = relaxed_reduce(x, v, scores, k / n, regime=regime, temperature=0.0, **inputs)
    kept = hard.kept_idx
    torch.testing.assert_close(soft.x.gather(1, kept[..., None].expand(-1, -1, 4)), hard.x, atol=1e-12, rtol=0)
    torch.testing.assert_close(soft.sizes.gather(1, kept), hard.sizes, atol=1e-12, rtol=0)
    torch.testing.assert_close(soft.attn_bias.gather(1, kept), hard.attn_bias, atol=1e-12, rtol=0)
    dropped = torch.ones_like(soft.mask, dtype=torch.bool).scatter(1, kept, False)
    assert (soft.attn_bias[dropped] == NEG_BIAS).all()


def test_recycle_mask_keeps_the_best_share_of_the_dropped():
    """Hard: 1 on the `keep` best and on the best ceil(share * dropped) others; soft: the same
    step at a temperature, tending to it as T -> 0; a real keep count moves it."""
    scores = rand(2, 20, seed=21)
    hard = recycle_mask(scores, 8, 0.3, 0.0)  # 12 dropped, ceil(3.6) = 4 recycled
    ranks = scores.argsort(dim=1, descending=True).argsort(dim=1)
    assert torch.equal(hard, (ranks < 12).to(hard.dtype))
    soft = recycle_mask(scores, torch.tensor([8.0, 8.0], dtype=torch.float64), 0.3, 1e-3)
    torch.testing.assert_close(soft, hard, atol=1e-6, rtol=0)
    assert recycle_mask(scores, 20, 0.3).sum().item() == 40  # nothing dropped: nothing to recycle
    assert recycle_mask(scores, 0, 0.3).sum(dim=1).tolist() == [6.0, 6.0]  # all 20 dropped: 6 recycled


@given(st.integers(1, 4), st.integers(2, 12), st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_removed_tokens_rank_after_every_present_one_and_nothing_else_moves(b, n, seed):
    """A token a carried hard mask removed (`present == 0`) scores just below the lowest present
    token of its row; present tokens keep their scores bit for bit; a row without removals is
    unchanged, and a row where everything was removed stays finite."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, n, generator=generator)
    present = (torch.rand(b, n, generator=generator) < 0.6).float() * torch.rand(b, n, generator=generator).clamp_min(0.1)
    present[0] = 1.0  # a row where nothing was removed
    out = removed_last(scores, present)
    assert torch.equal(out[present > 0], scores[present > 0])
    assert torch.equal(out[0], scores[0])
    assert torch.isfinite(out).all()
    for row in range(b):
        kept, gone = out[row][present[row] > 0], out[row][present[row] == 0]
        if len(kept) and len(gone):
            assert gone.max() < kept.min()
