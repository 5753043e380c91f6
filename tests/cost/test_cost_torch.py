"""The reduced cost as a differentiable torch function of the (expected) leaving counts: it is
the sympy expression, its gradient is the sympy derivative and matches finite differences,
gates switch the site overhead, and the search's entry point costs a relaxed graph alike."""

from __future__ import annotations

import pytest
import sympy
import torch

from cost_cases import bundled, loaded
from deos_dsl.cost.symbols import B
from deos_dsl.pipeline import bind_model, cost_space, relax, search_flops


@pytest.fixture(scope="module")
def pyramid():
    return cost_space(bundled("pyramiddrop.deos", "pyramiddrop"), loaded("embedded"))


def test_function_equals_exact_evaluation(pyramid):
    cost, schedule = pyramid
    function = cost.torch_function()
    leaving = {name: float(point.leaving) for name, point in schedule.items()}
    assert function.dense == cost.dense_flops()
    assert function(leaving).item() == pytest.approx(cost.flops(schedule), rel=1e-12)
    off = {site.name: 0.0 for site in cost.sites}
    unreduced = {site.name: float(cost.evaluate(site.entering, cost.point())) for site in cost.sites}
    assert function(unreduced, off).item() == pytest.approx(cost.dense_flops(), rel=1e-12)


def test_gradient_is_the_sympy_derivative(pyramid):
    cost, _ = pyramid
    function = cost.torch_function()
    counts = {site.name: torch.tensor(value, dtype=torch.float64, requires_grad=True)
              for site, value in zip(cost.sites, (100.3, 61.7, 30.2))}
    gates = {site.name: torch.tensor(0.6, dtype=torch.float64, requires_grad=True) for site in cost.sites}
    flops = function(counts, gates)
    flops.backward()
    values = {**{s.symbol: sympy.Float(counts[s.name].item(), 30) for s in cost.sites},
              **{s.gate: sympy.Float(0.6, 30) for s in cost.sites}}
    for site in cost.sites:
        for symbol, tensor in ((site.symbol, counts[site.name]), (site.gate, gates[site.name])):
            derivative = sympy.diff(function.expr, symbol).xreplace(values)
            assert tensor.grad.item() == pytest.approx(float(derivative), rel=1e-9)
            step = 1e-3
            with torch.no_grad():
                moved = {n: (t + step if t is tensor else t) for n, t in counts.items()}
                moved_gates = {n: (t + step if t is tensor else t) for n, t in gates.items()}
                numeric = (function(moved, moved_gates) - flops).item() / step
            assert tensor.grad.item() == pytest.approx(numeric, rel=1e-4)
    assert all(counts[s.name].grad.item() > 0 for s in cost.sites)  # keeping more tokens costs more


def test_missing_count_is_an_error(pyramid):
    cost, _ = pyramid
    with pytest.raises(KeyError, match="no leaving count"):
        cost.torch_function()({})


def test_search_flops_on_a_relaxed_graph(pyramid):
    """The search's entry point costs the RELAXED graph (shapes kept, soft masks) as the model
    it emits: the same function as the scored dense graph's."""
    cost, schedule = pyramid
    model = loaded("embedded")
    space = bundled("pyramiddrop.deos", "pyramiddrop")
    bound = bind_model(space, model)
    relax(bound)
    function = search_flops(bound)
    leaving = {name: torch.tensor(float(point.leaving), dtype=torch.float64) for name, point in schedule.items()}
    per_example = cost.per_example()  # a FLOPs budget is per example, whatever the search's batch
    assert function.dense == per_example.dense_flops() == cost.dense_flops() // cost.base[B]
    assert function(leaving).item() == pytest.approx(per_example.torch_function()(leaving).item(), rel=1e-12)
