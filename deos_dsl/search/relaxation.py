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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from deos_dsl.frontend import ir

RELAXATIONS = ("hard_concrete", "gumbel_sigmoid", "straight_through")
STRETCH = (-0.1, 1.1)  # hard-concrete stretch interval (l, r)
QUADRATURE = 256  # midpoints of U(0, 1) for expected_gate


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
