"""The one-sided augmented Lagrangian: under budget the constraint exerts NO gradient pressure
(penalty and gradient exactly 0, the multiplier does not rise); over budget the multiplier
rises by `eta * g` and the gradient pushes every keep ratio down and every gate open."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deos_dsl.search.lagrangian import AugmentedLagrangian
from deos_dsl.search.loop import Options, Search
from search_cases import load_space


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Search:
    tmp = tmp_path_factory.mktemp("lagrangian")
    return Search(load_space(tmp, budget="25%"), "embedded", "embedded", tmp / "out", Options(val_size=0))


def penalty_and_grads(search: Search, mu: float) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
    lagrangian = AugmentedLagrangian(1, dual_step=0.1, penalty=1.0)
    lagrangian.mu.fill_(mu)
    (value,), _ = search.expected_values(temperature=0.5)
    g = search.constraints.limits[0].violation(value).reshape(1)
    penalty = lagrangian.penalty_terms(g).sum()
    grads = torch.autograd.grad(penalty, search.params, allow_unused=True) if penalty.requires_grad else [None] * len(search.params)
    return g.detach(), penalty.detach(), list(grads)


def set_all(search: Search, alpha: float, beta: float) -> None:
    with torch.no_grad():
        for module in search.graph.modules.values():
            module.alpha.fill_(alpha)
            module.beta.fill_(beta)


def test_under_budget_no_penalty_no_gradient_no_multiplier_rise(search: Search):
    set_all(search, alpha=6.0, beta=-6.0)  # every gate open, every keep near its 5% floor
    g, penalty, grads = penalty_and_grads(search, mu=2.0)
    assert float(g) < 0
    assert float(penalty) == 0.0
    assert all(grad is None or torch.count_nonzero(grad) == 0 for grad in grads)
    lagrangian = AugmentedLagrangian(1, dual_step=0.1, penalty=1.0)
    lagrangian.update(g)
    assert float(lagrangian.mu) == 0.0  # max(0, 0 + eta * g) with g < 0


def test_over_budget_multiplier_rises_and_gradient_reduces_tokens(search: Search):
    set_all(search, alpha=0.0, beta=0.0)  # the init: gates 0.5, keeps ~52%, expected ~51% > 25%
    g, penalty, grads = penalty_and_grads(search, mu=0.5)
    assert float(g) > 0 and float(penalty) == pytest.approx(0.5 * float(g) + 0.5 * float(g) ** 2, rel=1e-5)
    lagrangian = AugmentedLagrangian(1, dual_step=0.1, penalty=1.0)
    for step in range(3):
        lagrangian.update(g)
        assert float(lagrangian.mu) == pytest.approx(0.1 * float(g) * (step + 1), rel=1e-6)
    by_name = dict(zip([id(p) for p in search.params], grads))
    # a descent step lowers every keep ratio and opens every gate (an open gate reduces) ...
    *reducing, last = search.graph.modules.items()
    for name, module in reducing:
        assert float(by_name[id(module.beta)]) > 0, name
        assert float(by_name[id(module.alpha)]) < 0, name
        assert by_name[id(module.gamma)] is None  # the regime does not change a token count
    # ... except after the last decoder layer, which changes no layer's input
    assert last[0] == "decoder.layers.3@1" and by_name[id(last[1].beta)] is None


def test_multiplier_decays_back_to_zero_once_within_budget():
    lagrangian = AugmentedLagrangian(2, dual_step=0.5, penalty=2.0)
    lagrangian.update(torch.tensor([0.4, -0.2]))
    assert lagrangian.mu.tolist() == pytest.approx([0.2, 0.0])
    lagrangian.update(torch.tensor([-0.3, -0.2]))
    assert lagrangian.mu.tolist() == pytest.approx([0.05, 0.0])
    lagrangian.update(torch.tensor([-0.3, 0.1]))
    assert lagrangian.mu.tolist() == pytest.approx([0.0, 0.05])
    g = torch.tensor([-0.1, 0.3], requires_grad=True)
    penalty = lagrangian.penalty_terms(g)
    assert penalty.tolist() == pytest.approx([0.0, 0.05 * 0.3 + 0.5 * 2.0 * 0.09])
    (grad,) = torch.autograd.grad(penalty.sum(), g)
    assert grad.tolist() == pytest.approx([0.0, 0.05 + 2.0 * 0.3])


def test_flops_constraint_is_differentiable_through_the_cost_model(tmp_path: Path):
    body = "  constraint flops <= 0.8 * dense\n"
    search = Search(load_space(tmp_path, budget="90%", body=body), "embedded", "embedded", tmp_path / "out", Options(val_size=0))
    labels = [limit.label for limit in search.constraints.limits]
    assert labels == ["tokens.mean <= 90%", "flops <= 0.8 * dense"]
    flops_limit = search.constraints.limits[1]
    assert flops_limit.target == pytest.approx(0.8 * search.constraints.flops.dense)
    (_, flops), _ = search.expected_values(temperature=1.0)
    assert 0 < float(flops.detach()) < search.constraints.flops.dense  # the expected schedule reduces
    grads = torch.autograd.grad(flops, [m.beta for m in search.graph.modules.values()], allow_unused=True)
    assert all(g is not None and float(g) > 0 for g in grads[:4])  # more kept tokens, more FLOPs
