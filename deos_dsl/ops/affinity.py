"""Affinity between dropped and kept tokens, locality term, and the tau-softmax with exact limits.

Shapes: sources `j` (tokens that may transfer) and destinations `i` (kept tokens);
`S [B, n_src, n_dst]`, `allowed [B or 1, n_src, n_dst]` bool.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from deos_dsl.ops.params import Param, batch_view

# Finite temperatures are clamped from below so that neither `S / tau` nor its gradient
# `S / tau**2` can overflow; at 1e-12 the assignment is already one-hot for any gap > 1e-10.
TAU_MIN = 1e-12


def unit_rows(features: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows scaled to unit L2 norm; an all-zero row stays zero (cosine 0 to everything)."""
    return features / features.norm(dim=-1, keepdim=True).clamp_min(eps)


def cosine_affinity(src_unit: Tensor, dst_unit: Tensor) -> Tensor:
    """`S[b, j, i] = cos(F_j, F_i)` from unit-normalised features `[B, n_src, d]`, `[B, n_dst, d]`."""
    return src_unit @ dst_unit.transpose(-1, -2)


def locality(pos_src: Tensor, pos_dst: Tensor, width: Param) -> tuple[Tensor | None, Tensor | None]:
    """Spatial term `-dist(pos_j, pos_i) / w` (Euclidean) and its hard-window mask.

    `pos_*`: `[B or 1, n, p]` grid coordinates or window ids.  `width == 0` (a Python
    number) is the hard limit: no additive term, only `dist == 0` destinations allowed.
    Returns `(term or None, allowed or None)`.
    """
    dist = (pos_src[:, :, None, :] - pos_dst[:, None, :, :]).square().sum(-1).sqrt()
    if isinstance(width, (int, float)) and width == 0:
        return None, dist == 0
    return -dist / batch_view(width, 3, dist.dtype, dist.device), None


def _one_hot_argmax(S: Tensor, allowed: Tensor | None) -> Tensor:
    masked = S if allowed is None else S.masked_fill(~allowed, -math.inf)
    idx = masked.argmax(dim=-1, keepdim=True)  # first index on ties
    hot = torch.zeros_like(S).scatter_(-1, idx, 1.0)
    return hot if allowed is None else hot * allowed.any(dim=-1, keepdim=True)


def _normalised(weights: Tensor, positive: bool = False) -> Tensor:
    """Rows scaled to sum 1; all-zero rows stay zero (`positive`: no row is all zero)."""
    den = weights.sum(dim=-1, keepdim=True)
    return weights / (den if positive else torch.where(den > 0, den, torch.ones_like(den)))


def _uniform(S: Tensor, allowed: Tensor | None, log_weight: Tensor | None) -> Tensor:
    if allowed is None:
        return _normalised(torch.ones_like(S) if log_weight is None else log_weight.exp().expand_as(S))
    w = allowed.to(S.dtype) if log_weight is None else allowed * log_weight.exp()
    return _normalised(w.expand_as(S))


def _finite_max(z: Tensor, allowed: Tensor | None) -> Tensor:
    """Row maxima `[..., 1]` of `z` over allowed entries (0 for a row with none), detached."""
    if allowed is None:  # every entry allowed and finite
        return z.amax(dim=-1, keepdim=True).detach()
    z_max = z.masked_fill(~allowed, -math.inf).amax(dim=-1, keepdim=True).detach()
    return torch.where(torch.isfinite(z_max), z_max, torch.zeros_like(z_max))


def _softmax(S: Tensor, tau: Tensor, allowed: Tensor | None, log_weight: Tensor | None) -> Tensor:
    z = (S - _finite_max(S, allowed)) / tau.clamp_min(TAU_MIN)
    if log_weight is not None:
        z = z + log_weight
    if allowed is not None:
        z = z.masked_fill(~allowed, -math.inf)
    return _normalised(torch.exp(z - _finite_max(z, allowed)), positive=allowed is None)


def tau_softmax(S: Tensor, tau: Param, allowed: Tensor | None, log_weight: Tensor | None = None) -> Tensor:
    """Row-wise `P[j, i] ∝ w_i exp(S[j, i] / tau)` over allowed destinations `i` (`None`: all
    of them, and no mask is built).

    `log_weight [B or 1, 1, n_dst]` (finite where allowed) is an optional log prior on the
    destinations (the relaxed form's soft keep mask).  Exact limits: `tau == 0` gives the
    one-hot argmax of `S` over allowed entries (first index on ties), `tau == inf` gives
    `w_i / sum w` (uniform without weights).  Rows without an allowed destination are all
    zero.  A Python `tau` picks one branch; a tensor `tau` is resolved element-wise.
    """
    allowed = None if allowed is None else allowed.expand_as(S)
    if S.shape[-1] == 0:
        return torch.zeros_like(S)
    if isinstance(tau, (int, float)):
        if tau == 0:
            return _one_hot_argmax(S, allowed)
        if math.isinf(tau):
            return _uniform(S, allowed, log_weight)
        return _softmax(S, torch.tensor(float(tau), dtype=S.dtype, device=S.device), allowed, log_weight)
    t = batch_view(tau, 3, S.dtype, S.device)
    soft = _softmax(S, torch.where(torch.isinf(t), torch.ones_like(t), t), allowed, log_weight)
    soft = torch.where(torch.isinf(t), _uniform(S, allowed, log_weight), soft)
    return torch.where(t == 0, _one_hot_argmax(S, allowed), soft)
