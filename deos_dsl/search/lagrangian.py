"""The one-sided augmented Lagrangian of the search's constraints (DESIGN 1.2).

Each constraint `i` has a violation `g_i` (`E[cost] / target - 1` for `<=`, `1 - E[cost] / target`
for `>=`; see `constraints.violation`), a multiplier `mu_i >= 0` and the shared penalty weight
`rho` (the policy's `penalty`):
- penalty `mu_i * max(0, g_i) + (rho / 2) * max(0, g_i)^2`: exactly 0, with zero gradient,
  whenever the constraint holds (`g_i <= 0`): being under budget is never penalised;
- dual ascent after each step: `mu_i <- max(0, mu_i + eta * g_i)` (`eta` the policy's
  `dual_step`): the multiplier rises while the constraint is violated and decays back to 0
  once it holds.
"""

from __future__ import annotations

import torch
from torch import Tensor


class AugmentedLagrangian:
    """Multipliers `mu [C]` (float64, CPU) for `C` constraints, with penalty and dual update."""

    def __init__(self, count: int, dual_step: float, penalty: float) -> None:
        self.mu = torch.zeros(count, dtype=torch.float64)
        self.dual_step, self.penalty = dual_step, penalty

    def penalty_terms(self, violations: Tensor) -> Tensor:
        """Per-constraint penalty `[C]` for violations `g [C]` (differentiable in `g`)."""
        over = violations.clamp_min(0.0)
        mu = self.mu.to(device=violations.device, dtype=violations.dtype)
        return mu * over + 0.5 * self.penalty * over.square()

    def update(self, violations: Tensor) -> None:
        """Dual ascent `mu <- max(0, mu + eta * g)` with the (detached) violations `g [C]`."""
        g = violations.detach().to(device="cpu", dtype=torch.float64)
        self.mu = (self.mu + self.dual_step * g).clamp_min(0.0)

    def state_dict(self) -> dict[str, Tensor]:
        return {"mu": self.mu.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state["mu"].shape != self.mu.shape:
            raise ValueError(f"multipliers for {state['mu'].numel()} constraints, expected {self.mu.numel()}")
        self.mu = state["mu"].to(torch.float64).clone()
