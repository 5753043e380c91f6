"""The discrete decision of every site (`SitePlan`) and the HARD site module the emitted graph calls.

`plan_sites` reads each site's values off its `SiteModule` (the IR's values for fixed and
corner spaces, the learned values after a search): gate on where `p > 0.5`, a concrete keep
count of the reducible tokens ENTERING the site (ratios round up as `keep_count` does; counts
and drops are counts), continuous regime values kept as they are. Consecutive sites of one
block stack see the span shrunk by the sites before them.

`HardSite.forward(x [B, N, D], scores [B, N], features [B, N, d] | None, sizes [B, N] | None)`
returns `(x [B, N', D], kept_idx [B, N'], sizes [B, N'], bias [B, N'])` with
`N' = N - |span| + keep` (`reduce_tokens`, original token order kept).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from deos_dsl.ops import Regime, keep_count, reduce_tokens

from .site_module import SiteModule, bipartite_destinations

Span = tuple[int, int]


@dataclass(frozen=True)
class SitePlan:
    """One site's discrete decision: `active`, the reducible `span` entering it, `keep` tokens
    of it, the regime values and the token counts entering / leaving the site's span."""

    name: str
    active: bool
    gate: float
    span: Span
    keep: int
    gamma: float
    tau: float
    theta: float | None
    rho: float
    nu: float
    proportional: bool
    locality: float | None
    bipartite: bool = False

    @property
    def entering(self) -> int:
        return self.span[1] - self.span[0]

    def regime(self) -> Regime:
        return Regime(gamma=self.gamma, tau=self.tau, theta=self.theta, rho=self.rho, nu=self.nu,
                      locality=self.locality, proportional=self.proportional)

    def to_json(self) -> dict[str, object]:
        """JSON-ready (infinite tau written as the string "inf")."""
        data = asdict(self)
        data["tau"] = "inf" if math.isinf(self.tau) else self.tau
        data["span"], data["kept"] = list(self.span), self.keep if self.active else self.entering
        return data


def plan_site(name: str, module: SiteModule, span: Span) -> SitePlan:
    """The plan of `module`'s site when `span` is the reducible span entering it."""
    with torch.no_grad():
        value = {key: float(module.value(key)) for key in module.specs}
    entering = span[1] - span[0]
    if module.count_mode == "keep":
        keep = min(int(value["beta"]), entering)
    elif module.count_mode == "drop":
        keep = max(entering - int(value["beta"]), 0)
    else:
        keep = keep_count(entering, min(max(value["beta"], 0.0), 1.0))
    theta = module.regime().theta
    return SitePlan(name, value["alpha"] > 0.5, value["alpha"], span, keep, value["gamma"], value["tau"],
                    None if theta is None else value["theta"], value["rho"], value["nu"], module.proportional, module.locality,
                    module.bipartite)


class HardSite(nn.Module):
    """The hard operator of one active site (module docstring)."""

    def __init__(self, plan: SitePlan, positions: Tensor | None = None) -> None:
        super().__init__()
        self.plan = plan
        self.register_buffer("positions", positions)

    def forward(self, x: Tensor, scores: Tensor, features: Tensor | None = None,
                sizes: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        start, end = self.plan.span
        result = reduce_tokens(x, range(start, end), scores[:, start:end], keep=self.plan.keep, regime=self.plan.regime(),
                               sizes=sizes, positions=self.positions,
                               dest_eligible=bipartite_destinations(end - start, x.device) if self.plan.bipartite else None,
                               features=None if features is None else features[:, start:end])
        return result.x, result.kept_idx, result.sizes, result.attn_bias
