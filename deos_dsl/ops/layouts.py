"""Token layouts of two methods, as operator inputs: which tokens score and receive.

- `pool_inputs`: window representatives and window ids on a row-major grid (2x2 pooling; the
  `position` score);
- `visionzip_inputs`: VisionZip's dominant tokens and its spread contextual targets (the only
  destinations of an `into: extra(n)` transfer).
Each returns keyword arguments for `reduce_tokens` / `relaxed_reduce`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deos_dsl.ops.select import hard_ranks


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
