"""Each corner of the unified operator equals an independent reference (float64, 1e-6): the
language's own corner values (`vocab.CORNERS`) and the published methods' settings (`ops_corners`)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_corners import evit, evit_inputs, fastv, merge, pool, prune, reweight, tome_inputs, visionzip

import ops_references as ref
from deos_dsl.ops import attention_from_query, pool_inputs, visionzip_inputs
from deos_dsl.ops.params import Regime

torch.set_num_threads(1)
ATOL = 1e-6
FAST = settings(max_examples=12, deadline=None)


def sort_by_origin(x: torch.Tensor, origin: torch.Tensor, *extra: torch.Tensor):
    """Reorder a reference output by original token index (new tokens, -1, go last)."""
    key = torch.where(origin < 0, origin.new_full((), 10**9), origin)
    order = key.argsort(dim=1)
    gather = lambda t: torch.gather(t, 1, order.reshape(order.shape + (1,) * (t.dim() - 2)).expand(order.shape + t.shape[2:]))
    return (gather(x), gather(origin)) + tuple(gather(t) for t in extra)


def qkv(seed: int, b: int, h: int, n: int, dh: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, dh, generator=g, dtype=torch.float64) for _ in range(2)]


@FAST
@given(b=st.integers(1, 3), n=st.integers(4, 40), r=st.integers(0, 25), cls=st.booleans(), seed=st.integers(0, 10**6))
def test_merge_equals_tome(b, n, r, cls, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 6, generator=g, dtype=torch.float64)
    metric = torch.randn(b, n, 5, generator=g, dtype=torch.float64)
    r = min(r, (n - int(cls)) // 2)
    want, want_size, origin = ref.tome_bipartite_merge(x, metric, r, class_token=cls)
    want, origin, want_size = sort_by_origin(want, origin, want_size)
    v = torch.arange(int(cls), n)
    got = merge(r).hard(x, v, **tome_inputs(metric[:, v], v))
    assert torch.equal(got.kept_idx, origin)
    torch.testing.assert_close(got.x, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.sizes, want_size[..., 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(got.attn_bias, want_size[..., 0].log(), atol=ATOL, rtol=0)  # proportional attention


def test_merge_tracks_sizes_over_layers():
    """Successive ToMe steps with carried-in sizes: at every layer our merge equals the
    reference step applied to the same (original-order) tokens and sizes."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 33, 8, generator=g, dtype=torch.float64)
    proj = torch.randn(8, 4, generator=g, dtype=torch.float64)
    sizes = None
    for _ in range(3):
        metric = x @ proj
        want, want_size, origin = ref.tome_bipartite_merge(
            x, metric, 5, size=None if sizes is None else sizes[..., None], class_token=True
        )
        want, _, want_size = sort_by_origin(want, origin, want_size)
        v = torch.arange(1, x.shape[1])
        got = merge(5).hard(x, v, sizes=sizes, **tome_inputs(metric[:, v], v))
        torch.testing.assert_close(got.x, want, atol=ATOL, rtol=0)
        torch.testing.assert_close(got.sizes, want_size[..., 0], atol=ATOL, rtol=0)
        x, sizes = got.x, got.sizes
    assert x.shape[1] == 33 - 15 and float(sizes.sum(dim=1)[0]) == pytest.approx(33.0)


@FAST
@given(b=st.integers(1, 3), n_img=st.integers(2, 30), n_sys=st.integers(0, 4), n_txt=st.integers(1, 5),
       ratio=st.sampled_from([0.25, 0.5, 0.75, 0.9]), seed=st.integers(0, 10**6))
def test_fastv_equals_reference(b, n_img, n_sys, n_txt, ratio, seed):
    n = n_sys + n_img + n_txt
    q, k = qkv(seed, b, 3, n, 4)
    x = torch.randn(b, n, 6, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    want, keep = ref.fastv_prune(x, ref.naive_attention_probs(q, k, causal=True), n_sys, n_img, ratio)
    # Fused-kernel friendly: only the last query row is recomputed.
    scores = attention_from_query(q[:, :, -1:], k, query_positions=torch.tensor([n - 1]))
    got = fastv(ratio, n_img).hard(x, range(n_sys, n_sys + n_img), scores)
    assert torch.equal(got.kept_idx, keep)
    torch.testing.assert_close(got.x, want, atol=ATOL, rtol=0)


@FAST
@given(b=st.integers(1, 3), n=st.integers(3, 40), keep_rate=st.sampled_from([0.3, 0.5, 0.7, 0.9]), seed=st.integers(0, 10**6))
def test_evit_equals_reference(b, n, keep_rate, seed):
    q, k = qkv(seed, b, 2, n, 4)
    x = torch.randn(b, n, 5, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    want, origin = ref.evit_fuse(x, ref.naive_attention_probs(q, k, causal=False), keep_rate)
    want, origin = sort_by_origin(want, origin)
    cls_attn = attention_from_query(q[:, :, :1], k)[:, 1:]
    got = evit(keep_rate).hard(x, range(1, n), **evit_inputs(cls_attn))
    assert torch.equal(got.kept_idx, origin)
    torch.testing.assert_close(got.x, want, atol=ATOL, rtol=0)


@FAST
@given(b=st.integers(1, 3), h=st.sampled_from([2, 4, 6]), w=st.sampled_from([2, 4, 8]), n_txt=st.integers(0, 4),
       seed=st.integers(0, 10**6))
def test_pool_equals_avg_pool2d(b, h, w, n_txt, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h * w + n_txt, 7, generator=g, dtype=torch.float64)
    want = torch.cat([ref.grid_avg_pool(x[:, : h * w], (h, w)), x[:, h * w:]], dim=1)
    # Pooling ignores scores' values beyond the window representative; affinity plays no role at tau = inf.
    got = pool((h, w)).hard(x, range(h * w), **pool_inputs((h, w)))
    torch.testing.assert_close(got.x, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.sizes[:, : h * w // 4], torch.full((b, h * w // 4), 4.0, dtype=torch.float64))


@FAST
@given(b=st.integers(1, 3), n=st.integers(8, 50), dominant=st.integers(1, 10), contextual=st.integers(1, 6),
       seed=st.integers(0, 10**6))
def test_visionzip_equals_reference(b, n, dominant, contextual, seed):
    dominant = min(dominant, n - 3)
    contextual = min(contextual, n - 1 - dominant)
    q, k = qkv(seed, b, 3, n, 4)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(b, n, 6, generator=g, dtype=torch.float64)
    metric = torch.randn(b, n, 4, generator=g, dtype=torch.float64)
    want, origin = ref.visionzip(x, ref.naive_attention_probs(q, k, causal=False), metric, dominant, contextual)
    want, origin = sort_by_origin(want, origin)
    cls_attn = attention_from_query(q[:, :, :1], k)[:, 1:]
    inputs = visionzip_inputs(cls_attn, dominant, contextual)
    got = visionzip(dominant, contextual).hard(x, range(1, n), features=metric, **inputs)
    assert torch.equal(got.kept_idx, origin)
    torch.testing.assert_close(got.x, want, atol=ATOL, rtol=0)


def test_prune_and_reweight_corners():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 4, generator=g, dtype=torch.float64)
    s = torch.rand(2, 10, generator=g, dtype=torch.float64)
    got = prune(0.3).hard(x, range(1, 11), s)
    top = s.argsort(dim=1, descending=True)[:, :3].sort(dim=1).values + 1
    want_idx = torch.cat([torch.zeros(2, 1, dtype=torch.long), top, torch.full((2, 1), 11)], dim=1)
    assert torch.equal(got.kept_idx, want_idx)
    assert torch.equal(got.x, torch.gather(x, 1, want_idx[..., None].expand(-1, -1, 4)))
    rw = reweight(0.5).hard(x, range(1, 11), s)
    shat = s / s.mean(dim=1, keepdim=True)
    torch.testing.assert_close(rw.x[:, 1:11], x[:, 1:11] * (1 + 0.5 * shat)[..., None], atol=ATOL, rtol=0)
    assert torch.equal(rw.x[:, [0, 11]], x[:, [0, 11]])


def test_corners_are_settings_of_one_regime_type():
    corners = [prune(0.5), reweight(0.2), merge(3), pool((4, 4)), fastv(0.5, 8), evit(0.5), visionzip(2, 2)]
    assert all(isinstance(c.regime, Regime) for c in corners)
    assert merge(3).regime.tau == 0 and pool((4, 4)).regime.tau == math.inf and prune(0.5).regime.gamma == 0


def test_corner_relaxed_forms_reduce_to_their_hard_forms():
    """Every shape-preserving corner, relaxed at T = 0, equals its hard form at kept positions."""
    g = torch.Generator().manual_seed(11)
    b, n = 2, 17  # token 0 protected, 16 reducible = a 4x4 grid
    x = torch.randn(b, n, 5, generator=g, dtype=torch.float64)
    v = torch.arange(1, n)
    feats = torch.randn(b, 16, 3, generator=g, dtype=torch.float64)
    attn = torch.rand(b, 16, generator=g, dtype=torch.float64)
    cases = [
        (prune(0.25), {"scores": attn}),
        (reweight(0.5), {"scores": attn}),
        (fastv(0.5, 16), {"scores": attn}),
        (merge(6), tome_inputs(feats, v)),
        (pool((4, 4)), pool_inputs((4, 4))),
        (visionzip(3, 2), {**visionzip_inputs(attn, 3, 2), "features": feats}),
    ]
    for corner, inputs in cases:
        inputs = dict(inputs)
        scores = inputs.pop("scores")
        hard = corner.hard(x, v, scores, **inputs)
        soft = corner.relaxed(x, v, scores, temperature=0.0, **inputs)
        got = soft.x.gather(1, hard.kept_idx[..., None].expand(-1, -1, 5))
        torch.testing.assert_close(got, hard.x, atol=1e-12, rtol=0, msg=corner.name)
        assert int(soft.mask.sum()) == hard.x.shape[1] * b, corner.name


def test_visionzip_inputs_per_example_dominant_counts():
    """A `[B]` dominant count (the relaxed form's) picks, row by row, what an int count picks;
    targets rank first, every other token keeps its attention."""
    attn = torch.rand(3, 20, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    counts = torch.tensor([2, 5, 19])
    batched = visionzip_inputs(attn, counts, 4)
    for row, count in enumerate(counts.tolist()):
        single = visionzip_inputs(attn[row:row + 1], count, 4)
        assert torch.equal(batched["dest_eligible"][row], single["dest_eligible"][0])
        torch.testing.assert_close(batched["scores"][row], single["scores"][0])
    assert batched["dest_eligible"].sum(dim=1).tolist() == [4, 4, 1]  # min(4, 20 - count)
    targets = batched["dest_eligible"]
    assert torch.equal(batched["scores"][~targets], attn[~targets])
    assert (batched["scores"][targets] > attn.amax()).all()
