"""Reweighting and the transfer/normalisation step shared by the hard and relaxed forms.

With carried-in sizes `s` (DESIGN 1.1 is `s = 1`), source weights `w` and drop weights `d`
(1 for dropped tokens in the hard form, `1 - m_j` in the relaxed form):

    M_i = sum_j P[j, i] * d_j * s_j * w_j                 (incoming mass)
    T_i = sum_j P[j, i] * d_j * s_j * w_j * X_j           (incoming content)
    Y_i = (s_i * A'_i + gamma * T_i) / (s_i + gamma * M_i) ** nu
    m_i = s_i + gamma * M_i                               (new size)

`incoming="mean"` replaces `(T_i, M_i)` by `(T_i, M_i) / max(M_i, 1)` inside `Y` only
(the incoming tokens are first averaged into one token, as VisionZip does); sizes always
use the true mass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deos_dsl.ops.params import Param, batch_view, is_number


def reweight(x: Tensor, shat: Tensor, rho: Param) -> Tensor:
    """`A'_i = (1 + rho * shat_i) * A_i` for `x [B, n, D]`, `shat [B, n]`; `x` itself when
    `rho` is the number 0 (the same values)."""
    if is_number(rho, 0):
        return x
    return x * (1.0 + batch_view(rho, 2, x.dtype, x.device) * shat)[..., None]


def transfer(
    a: Tensor,
    dst_size: Tensor,
    P: Tensor,
    src_mass: Tensor,
    src_x: Tensor,
    gamma: Param,
    nu: Param,
    incoming: str = "sum",
) -> tuple[Tensor, Tensor]:
    """Transfer sources into destinations and normalise.

    a `[B, k, D]` reweighted destinations, dst_size `[B, k]`, P `[B, n, k]` (rows sum to 1
    or 0), src_mass `[B, n]` = drop weight * size * source weight, src_x `[B, n, D]`.
    Returns `(Y [B, k, D], sizes [B, k])`.  `Y_i = A'_i` exactly when nothing arrives and
    `s_i = 1` or `nu = 1`.
    """
    weights = P * src_mass[..., None]
    mass = weights.sum(dim=1)
    content = weights.transpose(1, 2) @ src_x
    g2 = batch_view(gamma, 2, a.dtype, a.device)
    eff_mass = mass
    if incoming == "mean":
        count = mass.clamp_min(1.0)
        content = content / count[..., None]
        eff_mass = mass / count
    den = _denominator(dst_size + g2 * eff_mass, nu)
    y = a * (dst_size / den)[..., None] + (g2 / den)[..., None] * content
    return y, dst_size + g2 * mass


def without_transfer(a: Tensor, dst_size: Tensor, nu: Param) -> tuple[Tensor, Tensor]:
    """`transfer` at `gamma = 0`, where nothing arrives: the same `(Y, sizes)` without an
    assignment, `Y_i = s_i A'_i / s_i^nu`, sizes unchanged."""
    return a * (dst_size / _denominator(dst_size, nu))[..., None], dst_size


def _denominator(base: Tensor, nu: Param) -> Tensor:
    """`base ** nu` where `base > 0`, else 1 (`[B, k]`)."""
    den = torch.where(base > 0, base, torch.ones_like(base))
    return den if is_number(nu, 1) else den ** batch_view(nu, 2, base.dtype, base.device)
