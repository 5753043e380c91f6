"""Token selection: keep counts, score normalisation, hard top-k and the soft top-k mask.

All selections keep the ORIGINAL token order; ties in the score are broken towards the
lower token index (stable descending sort), identically in the hard and the relaxed form.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from deos_dsl.ops.params import Param, batch_view


def reducible_positions(reducible: Tensor | slice | range | list[int], n: int) -> list[int]:
    """Sorted, unique reducible positions (a Python list, so shapes stay static under
    tracing) from a `range`, a `slice`, an index list/tensor or a bool mask `[N]`."""
    if isinstance(reducible, slice):
        positions = list(range(n))[reducible]
    elif isinstance(reducible, Tensor) and reducible.dtype == torch.bool:
        if reducible.shape != (n,):
            raise ValueError(f"reducible mask must have shape [{n}], got {tuple(reducible.shape)}")
        positions = reducible.nonzero().flatten().tolist()
    else:
        positions = [int(i) for i in (reducible.flatten().tolist() if isinstance(reducible, Tensor) else reducible)]
    positions = sorted(set(positions))
    if positions and (positions[0] < 0 or positions[-1] >= n):
        raise ValueError(f"reducible positions must lie in [0, {n})")
    return positions


def keep_count(n: int, keep: int | float | None = None, drop: int | None = None) -> int:
    """Hard keep count over `n` reducible tokens.

    `keep` int: a count; `keep` float: a ratio `c`, giving `k = ceil(c * n)` (computed on
    `c * n` rounded to 9 decimals so that e.g. `0.07 * 100` gives 7, not 8); `drop`: keep
    `n - drop`.  The result is clamped to `[0, n]`.
    """
    if (keep is None) == (drop is None):
        raise ValueError("give exactly one of keep (count or ratio) and drop")
    if drop is not None:
        k = n - int(drop)
    elif isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise TypeError(f"keep must be an int count or a float ratio, got {keep!r}")
    elif isinstance(keep, int):
        k = keep
    else:
        if not 0.0 <= keep <= 1.0:
            raise ValueError(f"keep ratio must lie in [0, 1], got {keep}")
        k = math.ceil(round(keep * n, 9))
    return max(0, min(n, k))


def ceil_count(k: Tensor) -> Tensor:
    """`ceil(k)` of real token counts, on `k` rounded to 9 decimals first (as `keep_count`)."""
    return torch.ceil(torch.round(k, decimals=9))


def normalise_scores(scores: Tensor) -> Tensor:
    """Mean-1 normalised score `shat [B, n]` (DESIGN 1.1 step 3).

    Non-negative scores give exactly `s / mean(s)`.  A row with negative entries is first
    shifted so that its minimum is 0 (a monotone map, so rankings are unchanged); a row
    whose shifted mean is 0 (all scores equal) gets `shat = 1`.  Never NaN or inf.
    """
    if scores.shape[-1] == 0:
        return scores.clone()
    shift = scores.amin(dim=-1, keepdim=True).clamp(max=0.0)
    pos = scores - shift
    mean = pos.mean(dim=-1, keepdim=True)
    ok = mean > 0
    return torch.where(ok, pos / torch.where(ok, mean, torch.ones_like(mean)), torch.ones_like(pos))


def removed_last(scores: Tensor, present: Tensor) -> Tensor:
    """`scores [B, n]` with every token already removed upstream (`present == 0`, a carried hard
    mask) just below the lowest score of a present token: it ranks after every present token,
    so no keep slot goes to it, and a row where nothing is removed is returned unchanged."""
    lowest = torch.where(present > 0, scores, torch.inf).amin(dim=-1, keepdim=True)
    below = torch.nextafter(lowest, torch.full_like(lowest, -torch.inf))
    return torch.where(present > 0, scores, below)


def hard_ranks(scores: Tensor) -> Tensor:
    """1-based ranks `[B, n]` (1 = highest score), ties to the lower index."""
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(1, scores.shape[-1] + 1, device=scores.device).expand_as(order))
    return ranks


def hard_keep(scores: Tensor, k: int, shat: Tensor, theta: Param | None) -> tuple[Tensor, Tensor]:
    """Hard selection of the `k` best tokens, optionally thresholded by `shat > theta`.

    Returns `(slots [B, k'], valid [B, k'])`: positions (into the reducible set) sorted in
    original order, and which slots are really kept.  Without a threshold `k' = k` and every
    slot is valid; with one, example `b` keeps `k_b = min(k, #{shat > theta})` tokens and
    `k' = max_b k_b` (padding slots are the next-ranked tokens, marked invalid).
    """
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    if theta is None:  # static shapes (traceable)
        slots = torch.sort(order[:, :k], dim=-1).values
        return slots, torch.ones_like(slots, dtype=torch.bool)
    above = (shat > batch_view(theta, 2, shat.dtype, shat.device)).sum(dim=-1)
    n_keep = above.clamp(max=k)
    k_slots = int(n_keep.max()) if n_keep.numel() else k
    valid_by_rank = torch.arange(k_slots, device=scores.device)[None, :] < n_keep[:, None]
    slots, perm = torch.sort(order[:, :k_slots], dim=-1)
    return slots, torch.gather(valid_by_rank, 1, perm)


def soft_step(x: Tensor, temperature: Param) -> Tensor:
    """`sigmoid(x / T)`; `T == 0` gives the exact Heaviside step (0.5 at `x == 0`)."""
    t = torch.as_tensor(temperature, dtype=x.dtype, device=x.device)
    hard = torch.where(x > 0, 1.0, torch.where(x < 0, 0.0, 0.5)).to(x.dtype)
    soft = torch.sigmoid(x / torch.where(t > 0, t, torch.ones_like(t)))
    return torch.where(t > 0, soft, hard)


def soft_ranks(scores: Tensor, rank_temperature: Param | None) -> Tensor:
    """Ranks `[B, n]` (1 = best).  `None` or 0: hard ranks.  Otherwise the differentiable
    pairwise rank `1 + sum_{i != j} sigmoid((z_i - z_j) / T_r)` on standardised scores
    `z = (s - mean) / std`, which tends to the hard rank as `T_r -> 0` (without ties)."""
    if rank_temperature is None or (isinstance(rank_temperature, (int, float)) and rank_temperature == 0):
        return hard_ranks(scores).to(scores.dtype)
    mean = scores.mean(dim=-1, keepdim=True)
    std = scores.std(dim=-1, keepdim=True, unbiased=False) if scores.shape[-1] > 1 else torch.ones_like(mean)
    z = (scores - mean) / std.clamp_min(1e-12)
    diff = z[:, None, :] - z[:, :, None]  # [B, j, i] = z_i - z_j
    # sigmoid(0) = 1/2 on the diagonal, so the self term contributes exactly 1/2.
    return 0.5 + soft_step(diff, rank_temperature).sum(dim=-1)


def soft_keep_mask(
    scores: Tensor,
    k: Tensor,
    shat: Tensor,
    temperature: Param,
    theta: Param | None = None,
    rank_temperature: Param | None = None,
) -> Tensor:
    """Soft top-k keep mask `[B, n]` in `[0, 1]`.

    `m_j = sigmoid((k - rank_j + 1/2) / T) * sigmoid((shat_j - theta) / T)` (second factor
    only with a threshold), `k = c * |V|` a real number.  The step sits halfway between ranks
    so that `sum_j m_j ~= k`, and at `T = 0` it keeps exactly the `k` best tokens whenever `k`
    is an integer (the search discretises `k` to an integer), matching `hard_keep`.
    """
    ranks = soft_ranks(scores, rank_temperature)
    mask = soft_step(batch_view(k, 2, scores.dtype, scores.device) - ranks + 0.5, temperature)
    if theta is not None:
        mask = mask * soft_step(shat - batch_view(theta, 2, shat.dtype, shat.device), temperature)
    return mask


def recycle_mask(scores: Tensor, keep: Param, share: float, temperature: Param = 0.0) -> Tensor:
    """Recycling source weights `[B, n]` (SparseVLM v1): 1 for the `keep` best tokens and for the
    best `r = ceil(share * (n - keep))` of the others (the recycled dropped tokens), 0 for the
    rest, by score rank.  `keep` is a count (scalar or `[B]`; real in the relaxed form).  It is
    `soft_keep_mask` at `keep + r`: exactly 0 / 1 at `T = 0` when `keep` is an integer."""
    k = torch.as_tensor(keep, dtype=scores.dtype, device=scores.device)
    recycled = ceil_count(share * (scores.shape[-1] - k).clamp_min(0))
    return soft_keep_mask(scores, k + recycled, scores, temperature)
