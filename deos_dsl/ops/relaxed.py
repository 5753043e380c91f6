"""RELAXED, shape-preserving form of the unified operator, for the differentiable search.

Every reducible token j gets a soft keep mask `m_j` (soft top-k over its score rank, see
`select.soft_keep_mask`).  Token j sends the fraction `1 - m_j` of its mass to the other
tokens with `P[j, i] ∝ m_i exp((S[j, i] + log m_i) / tau)` (i != j, eligible): the mask is
both a destination weight (which survives tau = inf) and a log-prior inside the affinity
(which survives tau = 0), so P tends to the hard assignment over kept tokens as T -> 0 for
EVERY tau, exact limits included.  The transfer step is the hard form's (`transfer`).
The output keeps `[B, N, D]`; dropped tokens are hidden from downstream attention by the
additive key bias `log m_j` (floored at NEG_BIAS), plus `log size` with proportional
attention.  A gate g in [0, 1] mixes identity and reduction (g = 0 is exactly the identity).

At relaxation temperature `T = 0` with hard ranks and an integer `k = c |V|`, `m` is the
hard keep set, `P` restricted to dropped rows is the hard form's assignment, and the
outputs at kept positions equal the hard form's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Unpack

import torch
from torch import Tensor

from deos_dsl.ops.affinity import tau_softmax
from deos_dsl.ops.params import Param, Regime, batch_view
from deos_dsl.ops.select import soft_keep_mask
from deos_dsl.ops.inputs import SiteInputs, prepare_site
from deos_dsl.ops.transfer import reweight, transfer
from deos_dsl.ops.unified import attention_bias, transfer_plan


@dataclass(frozen=True)
class RelaxedResult:
    """x `[B, N, D]` (input dtype); mask `[B, N]` soft keep mask (protected tokens 1);
    attn_bias `[B, N]` additive key bias; sizes `[B, N]` soft sizes (compute dtype)."""

    x: Tensor
    mask: Tensor
    attn_bias: Tensor
    sizes: Tensor


def relaxed_reduce(
    x: Tensor,
    reducible,
    scores: Tensor,
    keep_ratio: Param,
    *,
    regime: Regime = Regime(),
    gate: Param = 1.0,
    temperature: Param = 1.0,
    rank_temperature: Param | None = None,
    **inputs: Unpack[SiteInputs],
) -> RelaxedResult:
    """Relaxed unified operator; inputs as `reduce_tokens`, plus:

    keep_ratio c (scalar or `[B]`, real `k = c |V|`); gate g (scalar or `[B]`); temperature T
    of the soft top-k step, in rank units (and in `shat` units for the threshold), `0` =
    hard mask; rank_temperature: None/0 for hard ranks, > 0 for differentiable pairwise
    soft ranks (gives the scores, e.g. a learned scorer, a gradient).  Differentiable in
    c, g, gamma, tau (use `tau = exp(log_tau)`), theta, rho, nu, scores, x and features.
    """
    if regime.fuse:
        raise ValueError("the fused extra token changes the token count; it has no shape-preserving relaxed form")
    site = prepare_site(x, reducible, scores, **inputs)
    b, n, _ = x.shape
    n_v = site.v_idx.numel()
    k = torch.as_tensor(keep_ratio, dtype=site.xv.dtype, device=x.device) * n_v
    m = soft_keep_mask(site.scores, k, site.shat, temperature, regime.theta, rank_temperature)
    everyone = torch.arange(n_v, device=x.device).expand(b, -1)
    S, allowed = transfer_plan(site, everyone, m > 0, regime)
    allowed = allowed & ~torch.eye(n_v, dtype=torch.bool, device=x.device)
    log_m = torch.log(torch.where(m > 0, m, torch.ones_like(m)))[:, None, :]
    P = tau_softmax(S + log_m, regime.tau, allowed, log_m)
    a = reweight(site.xv, site.shat, regime.rho)
    y, new_sizes = transfer(a, site.sv, P, site.source_mass(1.0 - m), site.xv, regime.gamma, regime.nu, regime.incoming)

    g = batch_view(gate, 2, site.xv.dtype, x.device)
    yv = site.xv + g[..., None] * (y - site.xv)
    mask_v = 1.0 - g * (1.0 - m)
    sizes_v = site.sv + g * (new_sizes - site.sv)
    out = site.x.index_copy(1, site.v_idx, yv)
    mask = torch.ones_like(site.sizes).index_copy(1, site.v_idx, mask_v.expand(b, -1))
    out_sizes = site.sizes.index_copy(1, site.v_idx, sizes_v.expand(b, -1))
    return RelaxedResult(
        x=out.to(x.dtype),
        mask=mask,
        attn_bias=attention_bias(mask, out_sizes, regime.proportional),
        sizes=out_sizes,
    )
