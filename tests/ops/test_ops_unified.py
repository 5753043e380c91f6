"""Hard form of the unified operator: DESIGN 1.1 equivalence, limits, corners of the input space."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ops_references as ref
from deos_dsl.ops import NEG_BIAS, Regime, gather_tokens, keep_count, reduce_tokens

torch.set_num_threads(1)
FAST = settings(max_examples=15, deadline=None)


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def all_finite(res) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in (res.x, res.sizes, res.attn_bias))


@FAST
@given(
    b=st.integers(1, 3),
    n=st.integers(2, 16),
    n_prot=st.integers(0, 4),
    keep=st.floats(0.0, 1.0),
    gamma=st.floats(0.0, 1.0),
    tau=st.sampled_from([0.0, 0.05, 0.7, math.inf]),
    rho=st.floats(0.0, 2.0),
    nu=st.floats(0.0, 1.5),
    carried=st.booleans(),
    seed=st.integers(0, 10**6),
)
def test_equals_design_literal(b, n, n_prot, keep, gamma, tau, rho, nu, carried, seed):
    """With s = 1 the operator is exactly DESIGN 1.1 steps 1-5 (loop reference); with
    carried-in sizes it is the size-weighted generalisation."""
    n_tot = n + n_prot
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n_tot, 5, generator=g, dtype=torch.float64)
    perm = torch.randperm(n_tot, generator=g)
    v = perm[:n].sort().values
    scores = torch.rand(b, n, generator=g, dtype=torch.float64) + 0.01
    feats = torch.randn(b, n, 3, generator=g, dtype=torch.float64)
    sizes = torch.rand(b, n_tot, generator=g, dtype=torch.float64) * 3 + 0.5 if carried else None
    regime = Regime(gamma=gamma, tau=tau, rho=rho, nu=nu)
    got = reduce_tokens(x, v, scores, keep=keep, regime=regime, features=feats, sizes=sizes)
    k = keep_count(n, keep)
    assert got.x.shape == (b, n_prot + k, 5)
    for i in range(b):
        y, kept, new_sizes = ref.design_operator(
            x[i], v.tolist(), scores[i], k, gamma, tau, rho, nu, feats[i], None if sizes is None else sizes[i]
        )
        assert got.kept_idx[i].tolist() == kept
        torch.testing.assert_close(got.x[i], y, atol=1e-10, rtol=0)
        torch.testing.assert_close(got.sizes[i], new_sizes, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lean_paths_give_the_general_paths_values(dtype):
    # Python numbers take the lean paths (no mask, no reweighting at rho 0, no power at nu 1, no
    # assignment at gamma 0, no bias without proportional attention); the same values as 0-d
    # tensors, an all-eligible mask and unit source weights take the general ones: equal values
    b, n = 2, 12
    as_tensor = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
    grid = itertools.product([0, 2], [0.0, 0.3, 1.0], [0.0, 0.2, math.inf], [0.0, 0.8], [1.0, 0.6], [False, True],
                             [False, True])
    for seed, (n_prot, gamma, tau, rho, nu, proportional, carried) in enumerate(grid):
        x, scores = rand(b, n, 5, seed=seed, dtype=dtype), rand(b, n, seed=seed + 1, dtype=dtype)
        sizes = 1.0 + rand(b, n, seed=seed + 2, dtype=dtype).abs() if carried else None
        reducible = range(n_prot, n)
        lean = reduce_tokens(x, reducible, scores, keep=5, sizes=sizes,
                             regime=Regime(gamma=gamma, tau=tau, rho=rho, nu=nu, proportional=proportional))
        general = reduce_tokens(x, reducible, scores, keep=5, sizes=sizes, dest_eligible=torch.ones(n, dtype=torch.bool),
                                source_weights=torch.ones(b, n, dtype=dtype),
                                regime=Regime(gamma=as_tensor(gamma), tau=tau, rho=as_tensor(rho), nu=as_tensor(nu),
                                              proportional=proportional))
        for got, want in zip((lean.x, lean.kept_idx, lean.sizes, lean.valid, lean.attn_bias),
                             (general.x, general.kept_idx, general.sizes, general.valid, general.attn_bias), strict=True):
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_tau_limits_are_exact_and_finite():
    x, s, f = rand(2, 20, 6, seed=1), rand(2, 20, seed=2).abs(), rand(2, 20, 4, seed=3)

    def run(tau):
        return reduce_tokens(x, range(20), s, keep=5, regime=Regime(gamma=0.7, tau=tau, nu=0.5), features=f)

    hard, uniform = run(0.0), run(math.inf)
    for tiny in (1e-8, 1e-30, 1e-300, 5e-324):
        r = run(tiny)
        assert all_finite(r)
        torch.testing.assert_close(r.x, hard.x, atol=1e-12, rtol=0)
    for huge in (1e12, 1e300):
        r = run(huge)
        assert all_finite(r)
        torch.testing.assert_close(r.x, uniform.x, atol=1e-9, rtol=0)
    # tau = inf: every dropped token is spread uniformly over the 5 kept tokens.
    torch.testing.assert_close(uniform.sizes, torch.full((2, 5), 1 + 0.7 * 15 / 5, dtype=torch.float64))
    # Tensor tau takes the same exact limits.
    torch.testing.assert_close(run(torch.tensor(0.0, dtype=torch.float64)).x, hard.x, atol=0, rtol=0)
    torch.testing.assert_close(run(torch.tensor(math.inf, dtype=torch.float64)).x, uniform.x, atol=1e-15, rtol=0)


def test_tau_zero_breaks_ties_to_first_index():
    x = rand(1, 4, 3, seed=4)
    f = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    s = torch.tensor([[1.0, 3.0, 2.0, 0.0]], dtype=torch.float64)  # keep tokens 1, 2; token 0 ties between them
    r = reduce_tokens(x, range(4), s, keep=2, regime=Regime(gamma=1.0, tau=0.0), features=f)
    assert r.sizes.tolist() == [[3.0, 1.0]]  # token 0 and token 3 (cos 0 to both) go to token 1


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_gamma_corners(gamma):
    x, s = rand(3, 15, 4, seed=5), rand(3, 12, seed=6).abs()
    r = reduce_tokens(x, range(3, 15), s, keep=4, regime=Regime(gamma=gamma, tau=0.3))
    kept = gather_tokens(x, r.kept_idx)
    if gamma == 0:  # pure pruning: kept tokens untouched, sizes unchanged
        assert torch.equal(r.x, kept)
        assert torch.equal(r.sizes, torch.ones(3, 7, dtype=torch.float64))
    else:  # full transfer conserves total size
        torch.testing.assert_close(r.sizes.sum(dim=1), torch.full((3,), 15.0, dtype=torch.float64))
        assert not torch.allclose(r.x[:, 3:], kept[:, 3:])


def test_protected_tokens_never_move_and_order_is_stable():
    b, n = 3, 30
    x = rand(b, n, 8, seed=7)
    v = torch.tensor([2, 3, 5, 7, 11, 13, 17, 19, 23, 29])
    protected = [i for i in range(n) if i not in v.tolist()]
    r = reduce_tokens(x, v, rand(b, 10, seed=8), keep=0.4, regime=Regime(gamma=0.5, tau=0.1, rho=0.3))
    assert (r.kept_idx[:, 1:] > r.kept_idx[:, :-1]).all()
    for i in range(b):
        rows = [j for j, p in enumerate(r.kept_idx[i].tolist()) if p in protected]
        assert [r.kept_idx[i, j].item() for j in rows] == protected
        assert torch.equal(r.x[i, rows], x[i, protected])


@pytest.mark.parametrize("sizes", [None, "random"])
def test_identity_when_nothing_is_dropped(sizes):
    x = rand(2, 9, 5, seed=9, dtype=torch.float32)
    s_in = None if sizes is None else rand(2, 9, seed=10).abs().float() + 0.5
    r = reduce_tokens(x, range(1, 8), rand(2, 7, seed=11), keep=7, sizes=s_in, regime=Regime(gamma=0.8, tau=0.2))
    assert torch.equal(r.x, x)
    assert torch.equal(r.kept_idx, torch.arange(9).expand(2, -1))
    assert torch.equal(r.sizes, torch.ones(2, 9) if s_in is None else s_in)


@pytest.mark.parametrize("case", ["all_protected", "k0", "k1", "empty_d", "single_token"])
def test_degenerate_inputs_are_finite(case):
    b, n, d, v, keep = 2, 6, 4, range(6), 3
    if case == "all_protected":
        v = []
    elif case == "k0":
        keep = 0
    elif case == "k1":
        keep = 1
    elif case == "empty_d":
        d = 0
    else:
        n, v, keep = 1, range(1), 1
    x = rand(b, n, d, seed=12)
    s = rand(b, len(v), seed=13)
    for regime in (Regime(gamma=1.0, tau=0.0), Regime(gamma=0.5, tau=math.inf, nu=0.0), Regime(gamma=1.0, tau=0.1, fuse=True)):
        r = reduce_tokens(x, v, s, keep=keep, regime=regime)
        assert all_finite(r)
        expected = (n - len(v)) + (keep if len(v) else 0) + int(regime.fuse)
        assert r.x.shape == (b, expected, d)
    if case == "k0":  # nothing kept: every reducible token vanishes (no destination)
        r = reduce_tokens(x, v, s, keep=0, regime=Regime(gamma=1.0))
        assert r.x.shape == (b, 0, d)


def test_threshold_caps_and_pads_per_example():
    x = rand(2, 8, 3, seed=14)
    s = torch.tensor([[9.0, 1, 1, 1, 1, 1, 1, 1], [5.0, 5, 1, 1, 1, 1, 1, 5]], dtype=torch.float64)
    # shat row 0: 9/2=4.5 and 0.5s; row 1: 5/2.5=2 (x3) and 0.4s -> above theta=1: 1 and 3 tokens.
    r = reduce_tokens(x, range(8), s, keep=4, regime=Regime(gamma=1.0, tau=0.0, theta=1.0))
    assert r.x.shape == (2, 3, 3)
    assert r.valid.tolist() == [[True, False, False], [True, True, True]]
    assert (r.attn_bias[~r.valid] == NEG_BIAS).all() and torch.isfinite(r.attn_bias).all()
    # Example 0 equals a plain call keeping one token; its padding slots carry nothing.
    one = reduce_tokens(x[:1], range(8), s[:1], keep=1, regime=Regime(gamma=1.0, tau=0.0))
    torch.testing.assert_close(r.x[0, :1], one.x[0])
    assert (r.sizes[0, 1:] == 0).all() and float(r.sizes[0].sum()) == 8.0
    # theta caps but never exceeds keep
    r2 = reduce_tokens(x, range(8), s, keep=2, regime=Regime(theta=1.0))
    assert r2.valid.sum(dim=1).tolist() == [1, 2]


def test_fused_token_position_and_side_gather():
    x = rand(2, 10, 4, seed=15)
    s = rand(2, 6, seed=16).abs()
    v = range(2, 8)  # [sys, sys, v*6, txt, txt]
    r = reduce_tokens(x, v, s, keep=2, regime=Regime(gamma=1.0, nu=0.0, fuse=True), dest_eligible=torch.zeros(6, dtype=torch.bool))
    assert r.kept_idx.shape == (2, 7) and (r.kept_idx[:, 4] == -1).all()
    assert (r.kept_idx[:, :2] == torch.tensor([0, 1])).all() and (r.kept_idx[:, 5:] == torch.tensor([8, 9])).all()
    dropped = torch.ones(2, 10, dtype=torch.bool)
    dropped.scatter_(1, r.kept_idx.clamp_min(0), False)
    torch.testing.assert_close(r.x[:, 4], (x * dropped[..., None]).sum(dim=1))
    assert (r.sizes[:, 4] == 1).all() and r.valid[:, 4].all()  # ONE new token, whatever mass arrived
    pos_ids = torch.arange(10)[None]
    assert gather_tokens(pos_ids, r.kept_idx, fill=-7).tolist() == [[p if p >= 0 else -7 for p in row] for row in r.kept_idx.tolist()]


def test_locality_and_eligibility():
    """tau = 0 with a strong locality term sends every dropped token to its nearest kept
    token on the line; ineligible kept tokens never receive."""
    n = 12
    x = rand(1, n, 3, seed=17)
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    s = torch.zeros(1, n, dtype=torch.float64)
    s[0, [0, 5, 10]] = 1.0
    r = reduce_tokens(x, range(n), s, keep=3, positions=pos, regime=Regime(gamma=1.0, tau=0.0, locality=0.01))
    assert r.sizes.tolist() == [[3.0, 5.0, 4.0]]  # 0 <- 1, 2;  5 <- 3, 4, 6, 7;  10 <- 8, 9, 11
    elig = torch.tensor([True] * 6 + [False] * 6)
    r = reduce_tokens(x, range(n), s, keep=3, positions=pos, dest_eligible=elig, regime=Regime(gamma=1.0, tau=0.0, locality=0.01))
    assert r.sizes.tolist() == [[3.0, 8.0, 1.0]]


def test_bfloat16_matches_float32():
    x = rand(2, 40, 16, seed=18, dtype=torch.float32)
    s = rand(2, 32, seed=19, dtype=torch.float32)
    regime = Regime(gamma=0.6, tau=0.2, rho=0.2, proportional=True)
    full = reduce_tokens(x, range(8, 40), s, keep=0.25, regime=regime)
    half = reduce_tokens(x.bfloat16(), range(8, 40), s.bfloat16(), keep=0.25, regime=regime)
    assert half.x.dtype == torch.bfloat16 and half.sizes.dtype == torch.float32
    same = (half.kept_idx == full.kept_idx).all(dim=1)  # bf16 scores may reorder near-ties
    assert same.any()
    torch.testing.assert_close(half.x[same].float(), full.x[same], atol=5e-2, rtol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    x = rand(2, 50, 32, seed=20, dtype=torch.float32).to(dtype)
    s = rand(2, 40, seed=21, dtype=torch.float32)
    regime = Regime(gamma=0.5, tau=0.1, rho=0.1, proportional=True)
    cpu = reduce_tokens(x, range(10, 50), s, keep=0.5, regime=regime)
    gpu = reduce_tokens(x.cuda(), range(10, 50), s.cuda(), keep=0.5, regime=regime)
    assert torch.equal(gpu.kept_idx.cpu(), cpu.kept_idx)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(gpu.x.cpu().float(), cpu.x.float(), atol=tol, rtol=tol)


def test_misspelt_input_is_an_error():
    with pytest.raises(TypeError, match="feature"):
        reduce_tokens(rand(1, 4, 2), range(4), rand(1, 4), keep=2, feature=rand(1, 4, 2))
