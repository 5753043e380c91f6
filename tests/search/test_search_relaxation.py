"""Relaxed gates: hard-concrete / Gumbel-sigmoid statistics against their closed forms, the
expected gate used by the constraints, straight-through gradients, the annealing schedules,
the deciding term and its ramp."""

from __future__ import annotations

import math

import pytest
import torch

from deos_dsl.frontend import ir
from deos_dsl.search.relaxation import (MARGIN, STRETCH, annealed, decision_weight, expected_gate, gate_from_noise, gate_noise,
                                        undecided)

N = 200_000


def samples(alpha: float, relaxation: str, temperature: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return gate_from_noise(torch.tensor(alpha, dtype=torch.float64), gate_noise(N, generator), relaxation, temperature)


@pytest.mark.parametrize("alpha", [-2.0, 0.0, 1.5])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.1])
def test_hard_concrete_has_exact_zeros_and_ones_with_the_closed_form_probabilities(alpha: float, temperature: float):
    z = samples(alpha, "hard_concrete", temperature)
    low, high = STRETCH
    # z = 0 iff sigmoid((L + alpha) / T) <= -l / (r - l), L logistic: P = sigmoid(T logit(-l/(r-l)) - alpha)
    zero, one = -low / (high - low), (1 - low) / (high - low)
    p_zero = 1 / (1 + math.exp(-(temperature * math.log(zero / (1 - zero)) - alpha)))
    p_one = 1 / (1 + math.exp(-(alpha - temperature * math.log(one / (1 - one)))))
    assert float((z == 0).double().mean()) == pytest.approx(p_zero, abs=4e-3)
    assert float((z == 1).double().mean()) == pytest.approx(p_one, abs=4e-3)
    assert float(z.min()) >= 0 and float(z.max()) <= 1
    # the constraints' expected gate is the mean of the samples
    assert float(expected_gate(torch.tensor(alpha, dtype=torch.float64), "hard_concrete", temperature)) == \
        pytest.approx(float(z.mean()), abs=4e-3)


@pytest.mark.parametrize("alpha", [-1.0, 0.7])
def test_gumbel_sigmoid_is_above_one_half_with_probability_p_and_tends_to_bernoulli(alpha: float):
    p = 1 / (1 + math.exp(-alpha))
    for temperature in (1.0, 0.3):
        z = samples(alpha, "gumbel_sigmoid", temperature)
        assert float((z > 0.5).double().mean()) == pytest.approx(p, abs=4e-3)
    cold = expected_gate(torch.tensor(alpha, dtype=torch.float64), "gumbel_sigmoid", 0.01)
    assert float(cold) == pytest.approx(p, abs=5e-3)  # T -> 0: a Bernoulli(p) gate


def test_straight_through_is_binary_with_the_gradient_of_p():
    alpha = torch.tensor(0.3, requires_grad=True)
    u = torch.tensor([0.2, 0.9])
    z = gate_from_noise(alpha, u, "straight_through", 1.0)
    assert z.detach().tolist() == [1.0, 0.0]  # p = 0.574: u < p is on
    z.sum().backward()
    p = torch.sigmoid(torch.tensor(0.3))
    assert float(alpha.grad) == pytest.approx(2 * float(p * (1 - p)))
    assert float(expected_gate(alpha, "straight_through", 1.0).detach()) == pytest.approx(float(p))


def test_expected_gate_is_differentiable_and_increasing_in_alpha():
    alpha = torch.tensor([-1.0, 0.0, 1.0], requires_grad=True)
    expected = expected_gate(alpha, "hard_concrete", 0.5)
    assert torch.all(expected.diff() > 0)
    expected.sum().backward()
    assert torch.all(alpha.grad > 0)


def num(value: float) -> ir.Num:
    return ir.Num(value=value)


@pytest.mark.parametrize("schedule", ["linear", "exponential", "cosine"])
def test_annealing_goes_from_start_to_end_monotonically(schedule: str):
    anneal = ir.Anneal(schedule=schedule, start=num(1.0), end=num(0.1))
    values = [annealed(anneal, step, 50) for step in range(50)]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert annealed(anneal, 25, 51) == pytest.approx({"linear": 0.55, "exponential": 0.1 ** 0.5, "cosine": 0.55}[schedule])
    assert annealed(ir.Anneal(schedule="constant", start=num(0.3)), 7, 50) == 0.3


def test_the_deciding_weight_is_off_in_the_first_half_rises_to_decide_at_three_quarters_then_holds():
    weights = [decision_weight(2.0, step, 101) for step in range(101)]
    assert weights[:51] == [0.0] * 51 and weights[75:] == [pytest.approx(2.0)] * 26
    assert weights[63] == pytest.approx(1.04) and all(b > a for a, b in zip(weights[50:75], weights[51:76]))
    assert decision_weight(0.0, 100, 101) == 0.0


def test_the_deciding_term_pushes_each_gate_to_the_side_it_is_on_until_it_is_decided():
    alpha = torch.tensor([-5.0, -2.0, -0.3, 0.0, 0.3, 2.0, 5.0], requires_grad=True)
    term = undecided(alpha)
    assert term.tolist() == pytest.approx([0.0, 2.0, 3.7, MARGIN, 3.7, 2.0, 0.0], abs=2e-3)
    term.sum().backward()
    descent = -alpha.grad
    assert descent.tolist() == [0.0, -1.0, -1.0, -1.0, 1.0, 1.0, 0.0]  # away from p = 1/2; a tie closes
    assert torch.sigmoid(torch.tensor(MARGIN)) > 0.98  # decided means p outside (0.02, 0.98)
