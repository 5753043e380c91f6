"""Corner constructors: published methods as parameter settings of the ONE unified operator.

A `Corner` is a regime plus a keep rule; `corner.hard(...)` / `corner.relaxed(...)` call
`reduce_tokens` / `relaxed_reduce`.  Method-specific inputs (ToMe's bipartite scores,
pooling windows, VisionZip's targets) come from the `*_inputs` helpers, which return
keyword arguments for those calls.

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

from deos_dsl.ops.params import Param, Regime
from deos_dsl.ops.relaxed import RelaxedResult, relaxed_reduce
from deos_dsl.ops.scores import bipartite_scores
from deos_dsl.ops.select import hard_ranks, keep_count, reducible_positions
from deos_dsl.ops.unified import HardResult, reduce_tokens


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


def prune(keep: int | float) -> Corner:
    """Keep the `keep` best tokens (count or ratio), drop the rest (gamma = 0)."""
    return Corner("prune", Regime(gamma=0.0), keep=keep)


def reweight(rho: Param, keep: int | float = 1.0) -> Corner:
    """Scale kept tokens by `1 + rho * shat` (gamma = 0; keeps everything by default)."""
    return Corner("reweight", Regime(gamma=0.0, rho=rho), keep=keep)


def merge(r: int, proportional: bool = True) -> Corner:
    """ToMe sharp merge: remove `r` tokens, each averaged (size-weighted) into its most
    similar destination.  Use with `tome_inputs` for ToMe's bipartite matching."""
    return Corner("merge", Regime(gamma=1.0, tau=0.0, nu=1.0, proportional=proportional), drop=r)


def pool(grid: tuple[int, int], window: tuple[int, int] = (2, 2)) -> Corner:
    """Average pooling over `window` on a row-major `grid = (H, W)` of reducible tokens
    (gamma = 1, tau = inf, hard windows); keeps one token per window.  Use with `pool_inputs`."""
    n_windows = math.ceil(grid[0] / window[0]) * math.ceil(grid[1] / window[1])
    return Corner("pool", Regime(gamma=1.0, tau=math.inf, nu=1.0, locality=0.0), keep=n_windows)


def fastv(ratio_removed: float, n_visual: int) -> Corner:
    """FastV: keep `round((1 - R) * n_visual)` visual tokens (FastV's own rounding) by
    last-token attention, drop the rest (a prune)."""
    return Corner("fastv", Regime(gamma=0.0), keep=round((1.0 - ratio_removed) * n_visual))


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


def pool_inputs(grid: tuple[int, int], window: tuple[int, int] = (2, 2), device: torch.device | None = None) -> dict[str, Tensor]:
    """Inputs for `pool` on a row-major `grid = (H, W)` of reducible tokens: the window
    representative (top-left token) scores 1, others 0; positions are WINDOW IDS, so a token
    is at distance 0 from exactly its own representative (no ties across windows).  Partial
    windows at the border are averaged over the tokens they have."""
    (h, w), (wh, ww) = grid, window
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    rep = (rows % wh == 0) & (cols % ww == 0)
    pos = torch.stack([rows // wh, cols // ww], dim=-1)
    return {"scores": rep.float()[None], "positions": pos}


def evit_inputs(cls_attention: Tensor) -> dict[str, Tensor]:
    """EViT: scores and source weights are the CLS attention `[B, |V|]`; no kept token
    receives (only the fused token does)."""
    return {
        "scores": cls_attention,
        "source_weights": cls_attention,
        "dest_eligible": torch.zeros(cls_attention.shape[-1], dtype=torch.bool, device=cls_attention.device),
    }


def visionzip_inputs(cls_attention: Tensor, dominant: int | Tensor, contextual: int) -> dict[str, Tensor]:
    """VisionZip: the `dominant` tokens (an int, or per example `[B]`) with the most CLS attention;
    among the rest (original order) every `max(1, n_rest // contextual)`-th token, `contextual` of
    them (all of the rest if fewer), is a contextual target and the only eligible destination.
    Targets score the row maximum + 1, every other token keeps its attention, so keeping
    `dominant + contextual` tokens keeps the dominant ones and the targets, and a soft top-k
    relaxes along the attention ranking."""
    n = cls_attention.shape[-1]
    d = torch.as_tensor(dominant, device=cls_attention.device).long().reshape(-1, 1)
    is_dom = hard_ranks(cls_attention) <= d
    rest_rank = torch.cumsum(~is_dom, dim=1) - 1  # position among the non-dominant tokens
    step = ((n - d) // max(contextual, 1)).clamp_min(1)
    is_target = ~is_dom & (rest_rank % step == 0) & (rest_rank // step < contextual)
    top = cls_attention.amax(dim=-1, keepdim=True) + 1.0
    return {"scores": torch.where(is_target, top, cls_attention), "dest_eligible": is_target}
