"""Normalisation of the operator's inputs at one site (shared by the hard and relaxed forms)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TypedDict, Unpack

import torch
from torch import Tensor

from deos_dsl.ops.affinity import unit_rows
from deos_dsl.ops.params import compute_dtype
from deos_dsl.ops.select import normalise_scores, reducible_positions


@dataclass(frozen=True)
class Site:
    """Reducible-set view of the inputs, in the internal compute dtype.

    v_list / v_idx: sorted reducible positions (Python list / LongTensor `[|V|]`);
    protected: the other positions (Python list); x `[B, N, D]` all tokens; xv `[B, |V|, D]`;
    sizes `[B, N]`; sv `[B, |V|]`; scores `[B, |V|]`; f_unit `[B, |V|, d_f]`;
    pos `[B or 1, |V|, p]` or None; eligible `[B, |V|]` bool, None when every token may
    receive; weights `[B, |V|]`, None when every source weighs 1. `shat` (the mean-1 score)
    is computed when first read: a prune or a transfer without reweighting never needs it.
    """

    v_list: list[int]
    protected: list[int]
    v_idx: Tensor
    x: Tensor
    xv: Tensor
    sizes: Tensor
    sv: Tensor
    scores: Tensor
    f_unit: Tensor
    pos: Tensor | None
    eligible: Tensor | None
    weights: Tensor | None

    @cached_property
    def shat(self) -> Tensor:
        return normalise_scores(self.scores)

    def source_mass(self, drop: Tensor) -> Tensor:
        """`[B, |V|]`: what each reducible token gives away, `drop * size * source weight`."""
        mass = drop * self.sv
        return mass if self.weights is None else mass * self.weights


def over_reducible(t: Tensor, v_idx: Tensor, n: int, dim: int, what: str) -> Tensor:
    """Restrict a per-token tensor whose token axis is `dim` and has length `N` to the
    reducible set; a tensor already of length `|V|` along `dim` is returned unchanged."""
    length = t.shape[dim]
    if length == v_idx.numel():
        return t
    if length == n:
        return t.index_select(dim, v_idx)
    raise ValueError(f"{what}: token axis has length {length}, expected |V|={v_idx.numel()} or N={n}")


class SiteInputs(TypedDict, total=False):
    """Optional per-token inputs of both forms (each may be omitted or None).

    features `[B, |V| or N, d_f]` affinity features (default: x); sizes `[B, N]` carried-in
    token sizes (default 1); positions `[|V| or N, p]` or `[B, ., p]` for the locality term;
    dest_eligible `[|V| or N]` or `[B, .]` bool, which kept tokens may receive transfer
    (default all); source_weights `[B, |V| or N]` scale each dropped token's mass (default 1).
    """

    features: Tensor | None
    sizes: Tensor | None
    positions: Tensor | None
    dest_eligible: Tensor | None
    source_weights: Tensor | None


def prepare_site(x: Tensor, reducible, scores: Tensor, **inputs: Unpack[SiteInputs]) -> Site:
    """Validate shapes, restrict everything to the reducible set `V` and cast to the
    compute dtype (float32, or float64 for float64 input)."""
    unknown = set(inputs) - set(SiteInputs.__annotations__)
    if unknown:
        raise TypeError(f"unknown operator inputs {sorted(unknown)}; expected {sorted(SiteInputs.__annotations__)}")
    features, sizes, positions = inputs.get("features"), inputs.get("sizes"), inputs.get("positions")
    dest_eligible, source_weights = inputs.get("dest_eligible"), inputs.get("source_weights")
    if x.dim() != 3:
        raise ValueError(f"x must be [B, N, D], got {tuple(x.shape)}")
    b, n, _ = x.shape
    cd = compute_dtype(x.dtype)

    def cast(t: Tensor) -> Tensor:  # no node at all when it already is the compute dtype
        return t if t.dtype == cd else t.to(cd)

    v_list = reducible_positions(reducible, n)
    v_idx = torch.tensor(v_list, dtype=torch.long, device=x.device)
    every = len(v_list) == n  # sorted, unique, in [0, n): nothing protected, the stream itself
    xc = cast(x)
    xv = xc if every else xc.index_select(1, v_idx)
    sizes_c = torch.ones(b, n, dtype=cd, device=x.device) if sizes is None else cast(sizes).expand(b, n)
    sv = sizes_c if every else sizes_c.index_select(1, v_idx)
    sc = cast(over_reducible(scores, v_idx, n, -1, "scores")).expand(b, -1)
    feats = xv if features is None else cast(over_reducible(features, v_idx, n, -2, "features"))
    pos = None
    if positions is not None:
        pos = cast(over_reducible(positions, v_idx, n, -2, "positions"))
        pos = pos[None] if pos.dim() == 2 else pos
    elig = None if dest_eligible is None else over_reducible(dest_eligible.bool(), v_idx, n, -1, "dest_eligible").expand(b, -1)
    weights = None
    if source_weights is not None:
        weights = cast(over_reducible(source_weights, v_idx, n, -1, "source_weights")).expand(b, v_idx.numel())
    in_v = set(v_list)
    return Site(
        v_list=v_list,
        protected=[i for i in range(n) if i not in in_v],
        v_idx=v_idx,
        x=xc,
        xv=xv,
        sizes=sizes_c,
        sv=sv,
        scores=sc,
        f_unit=unit_rows(feats.expand(b, -1, -1)),
        pos=pos,
        eligible=elig,
        weights=weights,
    )
