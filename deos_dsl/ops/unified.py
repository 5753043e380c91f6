"""HARD form of the unified operator: returns fewer tokens (DESIGN 1.1).

Output layout: protected tokens and kept reducible tokens in ORIGINAL order; with
`regime.fuse` one extra fused token is inserted right after the last reducible position.
`kept_idx` gives the original position of every output token (-1 for the fused token) so
callers can gather side tensors (position ids, RoPE tables, masks) with `gather_tokens`.
The fused token is one new token: its size is 1 (0, and not valid, when no mass arrives), so
a later site treats it as any other token, as EViT does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Unpack

import torch
from torch import Tensor

from deos_dsl.ops.affinity import cosine_affinity, locality, tau_softmax
from deos_dsl.ops.params import NEG_BIAS, Regime, is_number
from deos_dsl.ops.select import hard_keep, keep_count
from deos_dsl.ops.inputs import Site, SiteInputs, prepare_site
from deos_dsl.ops.transfer import reweight, transfer, without_transfer


@dataclass(frozen=True)
class HardResult:
    """x `[B, N', D]` (input dtype); kept_idx `[B, N']` long, original positions, -1 for the
    fused token; sizes `[B, N']` (compute dtype); valid `[B, N']` bool (False only for
    threshold padding slots and an empty fused token); attn_bias `[B, N']` additive
    attention-logit bias (`log size` with proportional attention, `NEG_BIAS` if not valid)."""

    x: Tensor
    kept_idx: Tensor
    sizes: Tensor
    valid: Tensor
    attn_bias: Tensor


def attention_bias(mask: Tensor, sizes: Tensor, proportional: bool) -> Tensor:
    """Additive key bias `log(mask) [+ log(sizes)]`, floored at `NEG_BIAS`; exactly
    `NEG_BIAS` where the mask (or, with proportional attention, the size) is 0.
    Gradients stay finite."""

    def safe_log(t: Tensor) -> Tensor:
        pos = t > 0
        return torch.where(pos, torch.log(torch.where(pos, t, torch.ones_like(t))), torch.full_like(t, NEG_BIAS))

    bias = safe_log(mask)
    if proportional:
        bias = bias + safe_log(sizes)
    return torch.where(mask > 0, bias.clamp_min(NEG_BIAS), torch.full_like(bias, NEG_BIAS))


def valid_bias(sizes: Tensor, proportional: bool) -> Tensor:
    """`attention_bias` of tokens that are all valid (mask 1): zeros (log 1), or with
    proportional attention their floored `log size`; no mask is built for the first."""
    return attention_bias(torch.ones_like(sizes), sizes, True) if proportional else torch.zeros_like(sizes)


def both(first: Tensor | None, second: Tensor | None) -> Tensor | None:
    """The conjunction of two optional masks (None: no restriction)."""
    return second if first is None else first if second is None else first & second


def gather_tokens(t: Tensor, kept_idx: Tensor, fill: float = 0.0) -> Tensor:
    """Gather a sequence-aligned side tensor `[B or 1, N, ...]` to `[B, N', ...]` with the
    hard form's `kept_idx`; positions `-1` (fused token) are filled with `fill`."""
    b = kept_idx.shape[0]
    t = t.expand((b,) + t.shape[1:])
    idx = kept_idx.clamp_min(0).reshape(kept_idx.shape + (1,) * (t.dim() - 2)).expand(kept_idx.shape + t.shape[2:])
    out = torch.gather(t, 1, idx)
    missing = (kept_idx < 0).reshape(idx.shape[:2] + (1,) * (t.dim() - 2))
    return out.masked_fill(missing, fill)


def transfer_plan(site: Site, dst: Tensor, dst_ok: Tensor | None, regime: Regime) -> tuple[Tensor, Tensor | None]:
    """Affinity `S [B, |V|, n_dst]` from every reducible token to the destinations `dst`
    `[B, n_dst]` (positions into V) and the `allowed` mask (eligible, locality window,
    `dst_ok [B, n_dst]`); `allowed` is None when nothing restricts the destinations (no
    `dst_ok`, every token eligible, no hard window)."""
    dst_unit = torch.gather(site.f_unit, 1, dst[..., None].expand(-1, -1, site.f_unit.shape[-1]))
    S = cosine_affinity(site.f_unit, dst_unit)
    allowed = both(dst_ok, None if site.eligible is None else torch.gather(site.eligible, 1, dst))
    allowed = None if allowed is None else allowed[:, None, :]
    if regime.locality is not None:
        if site.pos is None:
            raise ValueError("a locality term needs positions")
        pos = site.pos.expand(dst.shape[0], -1, -1)
        term, window = locality(pos, torch.gather(pos, 1, dst[..., None].expand(-1, -1, pos.shape[-1])), regime.locality)
        S = S if term is None else S + term
        allowed = both(allowed, window)
    return S, allowed


def reduce_tokens(
    x: Tensor,
    reducible,
    scores: Tensor,
    *,
    keep: int | float | None = None,
    drop: int | None = None,
    regime: Regime = Regime(),
    **inputs: Unpack[SiteInputs],
) -> HardResult:
    """Hard unified operator.

    x `[B, N, D]`; reducible: bool mask `[N]` / indices / range / slice (all other tokens are
    protected and pass through untouched); scores `[B, |V|]` or `[B, N]` (higher = keep);
    keep: count (int) or ratio c (float, `k = ceil(c |V|)`), or drop: number removed;
    inputs: the optional `SiteInputs` (features, sizes, positions, dest_eligible,
    source_weights).

    `N' = |protected| + k (+1 with fuse)`; with a threshold `k` becomes `max_b k_b`.
    """
    site = prepare_site(x, reducible, scores, **inputs)
    b, n, d = x.shape
    n_v = site.v_idx.numel()
    k = keep_count(n_v, keep, drop)
    thresholded = regime.theta is not None  # else every slot is valid: no mask is applied
    slots, valid = hard_keep(site.scores, k, site.shat if thresholded else site.scores, regime.theta)
    kept_x = torch.gather(site.xv, 1, slots[..., None].expand(-1, -1, d))
    a = kept_x if is_number(regime.rho, 0) else reweight(kept_x, torch.gather(site.shat, 1, slots), regime.rho)
    dst_size = torch.gather(site.sv, 1, slots)
    dst_size = dst_size * valid if thresholded else dst_size
    if not regime.transfers:  # nothing arrives: no affinity, no assignment
        y, new_sizes = without_transfer(a, dst_size, regime.nu)
    else:
        kept_v = torch.zeros(b, n_v, dtype=torch.bool, device=x.device)
        kept_v = kept_v.scatter(1, slots, valid) if thresholded else kept_v.scatter(1, slots, True)
        S, allowed = transfer_plan(site, slots, valid if thresholded else None, regime)
        if regime.fuse:
            S = torch.cat([S, S.new_zeros(b, n_v, 1)], dim=2)
            if allowed is not None:
                allowed = torch.cat([allowed.expand(b, n_v, -1), allowed.new_ones(b, n_v, 1)], dim=2)
            a = torch.cat([a, a.new_zeros(b, 1, d)], dim=1)
            dst_size = torch.cat([dst_size, dst_size.new_zeros(b, 1)], dim=1)
        P = tau_softmax(S, regime.tau, allowed)
        y, new_sizes = transfer(a, dst_size, P, site.source_mass(~kept_v), site.xv, regime.gamma, regime.nu,
                                regime.incoming)

    # Assemble protected + kept tokens in original order (slots are sorted: with nothing
    # protected the kept tokens already are).
    n_slots = slots.shape[1]
    if site.protected:
        prot = torch.tensor(site.protected, dtype=torch.long, device=x.device)
        idx = torch.cat([prot.expand(b, -1), site.v_idx[slots]], dim=1)
        idx, order = torch.sort(idx, dim=1)
        vals = torch.cat([site.x.index_select(1, prot), y[:, :n_slots]], dim=1)
        vals = torch.gather(vals, 1, order[..., None].expand(-1, -1, d))
        out_sizes = torch.gather(torch.cat([site.sizes.index_select(1, prot), new_sizes[:, :n_slots]], dim=1), 1, order)
        out_valid = torch.gather(torch.cat([torch.ones_like(prot, dtype=torch.bool).expand(b, -1), valid], dim=1), 1, order)
    else:
        idx, vals, out_sizes, out_valid = slots, y[:, :n_slots], new_sizes[:, :n_slots], valid  # V is 0..N-1
    if regime.fuse:
        # The fused token goes right after the last reducible position.
        at = sum(p < site.v_list[-1] for p in site.protected) + n_slots if n_v else len(site.protected)
        insert = lambda t, item: torch.cat([t[:, :at], item, t[:, at:]], dim=1)  # noqa: E731
        idx = insert(idx, idx.new_full((b, 1), -1))
        vals = insert(vals, y[:, n_slots:])
        arrived = new_sizes[:, n_slots:] > 0  # the fused token is ONE new token: size 1 (0 if empty)
        out_sizes = insert(out_sizes, arrived.to(out_sizes.dtype))
        out_valid = insert(out_valid, arrived)
    every_valid = not thresholded and not regime.fuse
    return HardResult(
        x=vals if vals.dtype == x.dtype else vals.to(x.dtype),
        kept_idx=idx,
        sizes=out_sizes,
        valid=out_valid,
        attn_bias=valid_bias(out_sizes, regime.proportional) if every_valid
        else attention_bias(out_valid.to(out_sizes.dtype), out_sizes, regime.proportional),
    )
