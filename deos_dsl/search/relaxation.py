"""Relaxed gates (DESIGN 1.2): sampling a site's activation gate, its expectation, and the
annealed temperature of the policy.

A learned gate has logit `alpha` (activation probability `p = sigmoid(alpha)`). With noise
`u ~ U(0, 1)` and temperature `T`, `l = log u - log(1 - u)`:
- `gumbel_sigmoid` (binary concrete): `z = sigmoid((l + alpha) / T)`, in (0, 1);
- `hard_concrete` (Louizos et al., 2018): that sample stretched to `(-0.1, 1.1)` and clamped
  to `[0, 1]`, so exact zeros and ones have positive probability;
- `straight_through`: `z = 1[u < p]` forward, the gradient of `p` backward.
As `T -> 0` both concrete forms tend to a Bernoulli(p) sample, which is what discretisation
(`p > 0.5`) assumes. `expected_gate` is `E_u[z]` under the CURRENT temperature, computed by a
fixed midpoint quadrature over `u` (differentiable in `alpha`, no noise): the constraints use
it, the task loss uses samples.

The same annealed temperature also drives the SiteModules' soft top-k (`temperature`
buffer, in rank units): at the end of the schedule both relaxations are close to hard.

Deciding (the policy's `decide: w`): in the second half of the schedule the search adds
`decision_weight(w, s, S) * sum_g undecided(alpha_g)` over the learned gates, the hinge
`undecided(alpha) = max(0, MARGIN - |alpha|)`: a constant push of `|alpha|` outwards, to the
side the gate is already on, until the gate is DECIDED (`|alpha| >= MARGIN`, p outside
(0.018, 0.982)), then nothing. Its weight rises linearly from 0 at the midpoint to `w` at three
quarters and stays there: the third quarter decides the gates, the last lets the keep ratios
settle under the constraints with the gates decided, so discretisation's `p > 0.5` rounds a
decision, not a coin, and its keep counts are the ones the search paid for. In that last quarter
(`settling`) the loop also PROJECTS after every step: the dual ascent of the multipliers lags
(at 11% tokens on the shipped LLaVA the expected schedule ended 7% over its budget, and repair
cut one layer by 10 tokens), so the keep logits are shifted down together by the smallest amount
that brings every upper limit's expected value within its target (projected gradient descent).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from deos_dsl.frontend import ir

RELAXATIONS = ("hard_concrete", "gumbel_sigmoid", "straight_through")
STRETCH = (-0.1, 1.1)  # hard-concrete stretch interval (l, r)
QUADRATURE = 256  # midpoints of U(0, 1) for expected_gate
MARGIN = 4.0  # |alpha| at which a gate is decided: p = sigmoid(4) = 0.982
TIE = 1e-3  # where the deciding term peaks (`undecided`): ties go to closed


def logistic_noise(u: Tensor) -> Tensor:
    """`log u - log(1 - u)` for `u` in (0, 1)."""
    return torch.log(u) - torch.log1p(-u)


def gate_from_noise(alpha: Tensor, u: Tensor, relaxation: str, temperature: float) -> Tensor:
    """The relaxed gate for noise `u` (any shape broadcasting with `alpha`), values in [0, 1]."""
    if relaxation == "straight_through":
        p = torch.sigmoid(alpha)
        hard = (u < p).to(p.dtype)
        return hard + p - p.detach()
    soft = torch.sigmoid((logistic_noise(u) + alpha) / temperature)
    if relaxation == "gumbel_sigmoid":
        return soft
    if relaxation == "hard_concrete":
        low, high = STRETCH
        return (soft * (high - low) + low).clamp(0.0, 1.0)
    raise ValueError(f"unknown relaxation {relaxation!r}; expected one of {RELAXATIONS}")


def gate_noise(batch: int, generator: torch.Generator) -> Tensor:
    """The uniform noise `[batch]` (float64, on CPU) of one relaxed gate sample per example."""
    return torch.rand(batch, generator=generator, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)



def expected_gate(alpha: Tensor, relaxation: str, temperature: float) -> Tensor:
    """`E_u[z]` (same shape as `alpha`): `sigmoid(alpha)` for straight-through, otherwise the
    midpoint quadrature of the gate over `QUADRATURE` noise values."""
    if relaxation == "straight_through":
        return torch.sigmoid(alpha)
    u = (torch.arange(QUADRATURE, device=alpha.device, dtype=alpha.dtype) + 0.5) / QUADRATURE
    return gate_from_noise(alpha[..., None], u, relaxation, temperature).mean(dim=-1)


def _value(expr: ir.Expr | None) -> float:
    assert isinstance(expr, ir.Num), "policies come from a resolved space"
    return expr.value


def decision_weight(decide: float, step: int, steps: int) -> float:
    """Weight of the deciding term at `step` (0-based) of `steps`: 0 in the first half, rising
    linearly to `decide` at three quarters, `decide` after (module docstring)."""
    t = step / max(steps - 1, 1)
    return decide * min(1.0, max(0.0, 4 * t - 2))


def settling(decide: float, step: int, steps: int) -> bool:
    """Whether `step` is in the settle phase: the deciding weight at full (`decide > 0`)."""
    return decide > 0 and decision_weight(decide, step, steps) >= decide


def undecided(alpha: Tensor) -> Tensor:
    """`max(0, MARGIN - |alpha - TIE|)` (same shape): MARGIN at the tie, 0 for a decided gate,
    slope 1 in between. The tie sits a hair above `alpha = 0`, so a gate nothing else moves
    (p = 0.5 exactly: no gradient) is pushed closed, the side `p > 0.5` already rounds it to."""
    return (MARGIN - (alpha - TIE).abs()).clamp_min(0.0)


def annealed(anneal: ir.Anneal, step: int, steps: int) -> float:
    """Temperature at `step` (0-based) of `steps`: `start` at step 0, `end` at the last step.

    `linear` interpolates, `exponential` is geometric, `cosine` follows half a cosine;
    `constant` stays at `start`.
    """
    start = _value(anneal.start)
    if anneal.schedule == "constant" or anneal.end is None:
        return start
    end = _value(anneal.end)
    t = step / max(steps - 1, 1)
    if anneal.schedule == "linear":
        return start + (end - start) * t
    if anneal.schedule == "exponential":
        return start * (end / start) ** t
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))
