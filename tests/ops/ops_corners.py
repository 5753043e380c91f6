"""The published methods the operator tests name, as settings of the ONE unified operator.

A `Corner` is a regime plus a keep rule; `corner.hard(...)` / `corner.relaxed(...)` call
`reduce_tokens` / `relaxed_reduce`. The four DSL corners take their regime values from the
table the language uses (`deos_dsl.frontend.vocab.CORNERS`), so the tests prove THOSE values
equal the published algorithms; FastV, EViT and VisionZip are the settings their spaces write.
ToMe's and EViT's inputs (`tome_inputs`, `evit_inputs`) are the methods' own token layouts.

| corner                | gamma | tau | nu | extras                                             |
|-----------------------|-------|-----|----|----------------------------------------------------|
| prune(k) / FastV      | 0     | -   | -  | scores: attention from the last query row          |
| reweight(rho)         | 0     | -   | -  | keep all, rho > 0                                  |
| merge(r) / ToMe       | 1     | 0   | 1  | bipartite scores, only set B receives, log-size bias |
| pool(window)          | 1     | inf | 1  | window-id positions, hard locality (w = 0)         |
| evit(keep)            | 1     | -   | 0  | fuse: all dropped mass into one extra token, weighted by CLS attention |
| visionzip(d, c)       | 1     | 0   | 0  | only contextual targets receive, incoming = mean   |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from deos_dsl.frontend.vocab import CORNERS
from deos_dsl.ops import Regime, bipartite_scores, keep_count, reduce_tokens, relaxed_reduce
from deos_dsl.ops.params import Param
from deos_dsl.ops.relaxed import RelaxedResult
from deos_dsl.ops.select import reducible_positions
from deos_dsl.ops.unified import HardResult


@dataclass(frozen=True)
class Corner:
    """A named regime of the unified operator plus its keep rule (`keep` count/ratio or
    `drop` count, exactly one)."""

    name: str
    regime: Regime
    keep: int | float | None = None
    drop: int | None = None

    def hard(self, x: Tensor, reducible, scores: Tensor, **inputs) -> HardResult:
        """`reduce_tokens` in this corner; `inputs` as `reduce_tokens` (features, sizes, ...)."""
        return reduce_tokens(x, reducible, scores, keep=self.keep, drop=self.drop, regime=self.regime, **inputs)

    def relaxed(self, x: Tensor, reducible, scores: Tensor, **inputs) -> RelaxedResult:
        """`relaxed_reduce` in this corner, with keep ratio `k / |V|` of the hard keep count."""
        n_v = len(reducible_positions(reducible, x.shape[1]))
        ratio = keep_count(n_v, self.keep, self.drop) / max(n_v, 1)
        return relaxed_reduce(x, reducible, scores, ratio, regime=self.regime, **inputs)


def table_regime(name: str, **settings) -> Regime:
    """The regime of the language's corner `name` (`vocab.CORNERS`), its settings applied."""
    values = {**CORNERS[name].values, **settings}
    theta = values.pop("theta")
    return Regime(**values, theta=theta or None)


def prune(keep: int | float) -> Corner:
    """Keep the `keep` best tokens (count or ratio), drop the rest (gamma = 0)."""
    return Corner("prune", table_regime("prune"), keep=keep)


def reweight(rho: Param, keep: int | float = 1.0) -> Corner:
    """Scale kept tokens by `1 + rho * shat` (gamma = 0; keeps everything by default)."""
    return Corner("reweight", table_regime("reweight", rho=rho), keep=keep)


def merge(r: int, proportional: bool = True) -> Corner:
    """ToMe sharp merge: remove `r` tokens, each averaged (size-weighted) into its most
    similar destination.  Use with `tome_inputs` for ToMe's bipartite matching."""
    return Corner("merge", table_regime("merge", proportional=proportional), drop=r)


def pool(grid: tuple[int, int], window: tuple[int, int] = (2, 2)) -> Corner:
    """Average pooling over `window` on a row-major `grid = (H, W)` of reducible tokens
    (gamma = 1, tau = inf, hard windows); keeps one token per window.  Use with `pool_inputs`."""
    n_windows = math.ceil(grid[0] / window[0]) * math.ceil(grid[1] / window[1])
    return Corner("pool", table_regime("pool", locality=0.0), keep=n_windows)


def fastv(ratio_removed: float, n_visual: int) -> Corner:
    """FastV: keep `round((1 - R) * n_visual)` visual tokens (FastV's own rounding) by
    last-token attention, drop the rest (a prune)."""
    return Corner("fastv", table_regime("prune"), keep=round((1.0 - ratio_removed) * n_visual))


def evit(keep: int | float) -> Corner:
    """EViT: keep the most attended tokens, fuse all others into one extra token
    `sum_j a_j x_j` (a = CLS attention, unnormalised as in EViT).  Use with `evit_inputs`."""
    return Corner("evit", Regime(gamma=1.0, nu=0.0, fuse=True), keep=keep)


def visionzip(dominant: int, contextual: int) -> Corner:
    """VisionZip: keep `dominant` tokens by CLS attention and `contextual` uniformly spread
    targets; each other token goes to its most similar target, which becomes
    `target + mean(assigned)`.  Use with `visionzip_inputs`."""
    return Corner("visionzip", Regime(gamma=1.0, tau=0.0, nu=0.0, incoming="mean"), keep=dominant + contextual)


def tome_inputs(features: Tensor, reducible_positions: Tensor) -> dict[str, Tensor]:
    """ToMe's alternating bipartite split on the ORIGINAL positions (even -> set A, odd ->
    set B), its scores and destination eligibility (only B receives) and the features."""
    a_set = reducible_positions % 2 == 0
    return {"scores": bipartite_scores(features, a_set), "dest_eligible": ~a_set, "features": features}


def evit_inputs(cls_attention: Tensor) -> dict[str, Tensor]:
    """EViT: scores and source weights are the CLS attention `[B, |V|]`; no kept token
    receives (only the fused token does)."""
    return {
        "scores": cls_attention,
        "source_weights": cls_attention,
        "dest_eligible": torch.zeros(cls_attention.shape[-1], dtype=torch.bool, device=cls_attention.device),
    }
