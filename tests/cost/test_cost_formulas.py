"""The registry, op by op, against FlopCounterMode (and hand counts where it is blind or silent):
each op is traced both as ATen (`make_fx`) and as torch.fx leaves (`symbolic_trace`), costed by
`graph_costs`, and run under FlopCounterMode."""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from cost_cases import counted
from deos_dsl.compiler.hard_site import HardSite, SitePlan
from deos_dsl.cost import Conventions
from deos_dsl.cost.propagate import graph_costs

G = torch.Generator().manual_seed(0)


def _r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G)


def _total(gm: fx.GraphModule, args: tuple[torch.Tensor, ...], conventions: Conventions = Conventions(),
           kinds: tuple[str, ...] | None = None) -> int:
    FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(*args)
    return sum(int(e) for costs in graph_costs(gm, conventions).values() for k, e in costs.items()
               if kinds is None or k in kinds)


OPS: list[tuple[str, Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]] = [
    ("mm", lambda a, b: torch.mm(a, b), (_r(5, 7), _r(7, 3))),
    ("addmm", lambda b, x, y: torch.addmm(b, x, y), (_r(3), _r(5, 7), _r(7, 3))),
    ("bmm", lambda a, b: torch.bmm(a, b), (_r(4, 5, 7), _r(4, 7, 3))),
    ("baddbmm", lambda b, x, y: torch.baddbmm(b, x, y), (_r(4, 5, 3), _r(4, 5, 7), _r(4, 7, 3))),
    ("matmul 3d @ 2d", lambda a, b: torch.matmul(a, b), (_r(2, 5, 7), _r(7, 3))),
    ("matmul broadcast batch", lambda a, b: torch.matmul(a, b), (_r(2, 1, 5, 7), _r(3, 7, 4))),
    ("matmul 1d @ 3d", lambda a, b: torch.matmul(a, b), (_r(7), _r(2, 7, 3))),
    ("linear 3d", lambda x, w, b: F.linear(x, w, b), (_r(2, 6, 8), _r(5, 8), _r(5))),
    ("linear no bias", lambda x, w: F.linear(x, w), (_r(2, 3, 6, 8), _r(5, 8))),
    ("einsum attention", lambda q, k: torch.einsum("bhqd,bhkd->bhqk", q, k), (_r(2, 3, 5, 4), _r(2, 3, 6, 4))),
    ("einsum contraction + sum", lambda a, b: torch.einsum("ijx,jk->ik", a, b), (_r(5, 7, 2), _r(7, 3))),
    ("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), (_r(2, 3, 9, 9), _r(4, 3, 3, 3), _r(4))),
    ("conv2d groups", lambda x, w: F.conv2d(x, w, groups=2), (_r(2, 4, 6, 6), _r(6, 2, 3, 3))),
    ("conv1d dilation", lambda x, w: F.conv1d(x, w, dilation=2), (_r(2, 3, 11), _r(5, 3, 3))),
    ("conv_transpose2d", lambda x, w: F.conv_transpose2d(x, w, stride=2), (_r(2, 4, 5, 5), _r(4, 3, 3, 3))),
]


@pytest.mark.parametrize("name,function,args", OPS, ids=[op[0] for op in OPS])
def test_op_equals_flop_counter_mode(name: str, function: Callable[..., torch.Tensor], args: tuple[torch.Tensor, ...]):
    theirs = counted(lambda: function(*args))
    assert theirs > 0
    assert _total(make_fx(function)(*args), args) == theirs  # ATen ops, as FlopCounterMode sees them
    assert _total(fx.symbolic_trace(function), args) == theirs  # torch.fx leaves (F.linear, torch.matmul, ...)


def test_einsum_without_contraction_is_no_matmul():
    """An einsum with nothing to contract is a broadcast product, not a matmul: 0 for both."""
    function, args = (lambda a, b: torch.einsum("i,j->ij", a, b)), (_r(5), _r(3))
    assert counted(lambda: function(*args)) == 0
    assert _total(make_fx(function)(*args), args) == _total(fx.symbolic_trace(function), args) == 0


def test_modules_equal_flop_counter_mode():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Flatten(2), nn.LayerNorm(36), nn.Linear(36, 5),
                          nn.Softmax(-1))
    x = _r(2, 3, 6, 6)
    assert _total(fx.symbolic_trace(model), (x,)) == counted(lambda: model(x)) > 0


@pytest.mark.parametrize("causal", [False, True])
def test_attention_where_flop_counter_mode_is_blind(causal: bool):
    """The CPU fused kernel counts 0; we count QK^T + AV as the math backend does: the hand
    formula 2*B*H*Lq*Lk*(dq + dv); causal halving counts Lq*(Lq + 1)/2 pairs instead."""
    q, k, v = _r(2, 3, 7, 4), _r(2, 3, 7, 4), _r(2, 3, 7, 4)
    attend = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    assert counted(lambda: attend(q, k, v)) == 0
    by_hand = 2 * 2 * 3 * 7 * 7 * (4 + 4)
    assert counted(lambda: attend(q, k, v), math=True) == by_hand
    for gm in (make_fx(attend)(q, k, v), fx.symbolic_trace(attend)):
        assert _total(gm, (q, k, v)) == by_hand
        halved = _total(gm, (q, k, v), Conventions(causal_halving=True))
        assert halved == (2 * 2 * 3 * (7 * 8 // 2) * (4 + 4) if causal else by_hand)


def test_all_ops_mode_counts_pointwise_softmax_norms():
    x, w = _r(2, 5, 8), _r(8)
    function = lambda x, w: torch.softmax(F.layer_norm(x, (8,)) * w + 1.0, dim=-1).sum(-1)  # noqa: E731
    gm = make_fx(function)(x, w)
    assert _total(gm, (x, w)) == 0  # no matmul, no convolution, no attention
    numel = 2 * 5 * 8
    # layer norm 5 per element, mul 1, add 1, softmax 5, sum 1 per input element
    assert _total(gm, (x, w), Conventions(all_ops=True)) == 5 * numel + numel + numel + 5 * numel + numel


def _plan(entering: int, keep: int, **regime: Any) -> SitePlan:
    values = dict(gamma=0.0, tau=math.inf, theta=None, rho=0.0, nu=1.0, proportional=False, locality=None)
    values.update(regime)
    extra = 1 if values.get("fuse") else values.pop("contextual", 0)
    return SitePlan("site", True, 1.0, (2, 2 + entering), keep, extra=extra, **values)


@pytest.mark.parametrize("regime", [dict(), dict(gamma=1.0, tau=0.0), dict(gamma=0.5, tau=0.3, rho=0.2),
                                    dict(gamma=1.0, tau=0.0, fuse=True), dict(gamma=1.0, tau=0.0, contextual=3),
                                    dict(rho=0.8, nu=0.5)],
                         ids=["prune", "merge", "unified", "fuse", "contextual", "reweight"])
def test_hard_site_operator(regime: dict[str, Any]):
    """The operator formula (cosine affinity + transfer matmuls) equals FlopCounterMode on the
    hard site itself, for pruning (a gather: no matmul at all), merging, fusing into one token,
    contextual targets and reweighting (gamma 0: no transfer, no matmul)."""
    x, scores, features = _r(2, 20, 6), _r(2, 20), _r(2, 20, 4)
    site = HardSite(_plan(16, 7, **regime))
    graph = fx.Graph()
    inputs = [graph.placeholder(name) for name in ("x", "scores", "features")]
    graph.output(graph.call_module("site", tuple(inputs)))
    gm = fx.GraphModule(nn.ModuleDict({"site": site}), graph)
    flops = counted(lambda: site(x, scores, features))
    assert _total(gm, (x, scores, features)) == flops and (flops == 0) == (not site.plan.transfers)
