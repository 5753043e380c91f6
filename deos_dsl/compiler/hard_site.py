"""The discrete decision of every site (`SitePlan`) and the HARD site module the emitted graph calls.

`plan_sites` reads each site's values off its `SiteModule` (the IR's values for fixed and
corner spaces, the learned values after a search): gate on where `p > 0.5`, a concrete keep
count of the reducible tokens ENTERING the site (ratios round up as `keep_count` does; counts
and drops are counts; a bipartite ToMe merge removes at most half the span, ToMe's own cap),
continuous regime values kept as they are. Consecutive sites of one
block stack see the span shrunk by the sites before them.

Counts with `into: extra(n)` (`site_transfer`): `keep` is what `retain` keeps (EViT's attentive
tokens, VisionZip's dominant ones); `extra` tokens leave on top of them: the fused token
(`extra(1)`) or the contextual targets (`extra(n > 1)`, at most the tokens not retained). So
`leaving = keep + extra` tokens of the span leave the site, and they are the span the next site
of the stack reduces (EViT ranks the previous fused token with the others).

`HardSite.forward(x [B, N, D], scores [B, N], features [B, N, d] | None, sizes [B, N] | None)`
returns `(x [B, N', D], kept_idx [B, N'], sizes [B, N'], bias [B, N'])` with
`N' = N - |span| + leaving`, original token order kept. A prune (`SitePlan.selects_only`) ranks
the span as `reduce_tokens` does and gathers the stream once (no affinity, no transfer); any
other corner runs `reduce_tokens` on the span alone. Either way the tokens around the span are
sliced past, so `N` may stay a symbol (a dynamic prompt length). `kept_idx` is the
input position whose side tensors (position id, RoPE row, mask row and column) each output token
takes: its own; the fused token, which sits right after the span's last token, takes that
token's (`span[1] - 1`): it sees what the last reducible token sees and is seen by whoever sees it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from deos_dsl.ops import Regime, keep_count, reduce_tokens, valid_bias
from deos_dsl.ops.params import compute_dtype
from deos_dsl.ops.select import hard_keep

from .site_module import GATE, KEEP, SiteModule
from .site_transfer import Transfer, bipartite_min_kept, transfer_inputs

Span = tuple[int, int]


@dataclass(frozen=True)
class SitePlan:
    """One site's discrete decision: `active`, the reducible `span` entering it, `keep` tokens
    of it and `extra` tokens on top (`fuse`: one fused token; else contextual targets), the
    `recycle`d share of the dropped tokens and the regime values."""

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
    fuse: bool = False
    extra: int = 0
    recycle: float | None = None

    @property
    def entering(self) -> int:
        return self.span[1] - self.span[0]

    @property
    def leaving(self) -> int:
        """Tokens of the span leaving the site (all of them when it is off)."""
        return self.keep + self.extra if self.active else self.entering

    @property
    def contextual(self) -> int:
        """The contextual targets (`into: extra(n > 1)`), 0 otherwise."""
        return 0 if self.fuse else self.extra

    @property
    def selects_only(self) -> bool:
        """A prune: the site keeps tokens as they are and computes no transfer or affinity
        (`Regime.selects_only`, no contextual targets)."""
        return self.regime().selects_only and not self.contextual

    @property
    def transfers(self) -> bool:
        """Whether the site computes an affinity and a transfer (`Regime.transfers`)."""
        return self.regime().transfers

    def regime(self) -> Regime:
        return Regime(gamma=self.gamma, tau=self.tau, theta=self.theta, rho=self.rho, nu=self.nu,
                      locality=self.locality, proportional=self.proportional,
                      incoming="mean" if self.contextual else "sum", fuse=self.fuse)

    def to_json(self) -> dict[str, object]:
        """JSON-ready (infinite tau written as the string "inf"); `kept` / `leaving` are the
        retained / all span tokens leaving the site as it runs (`keep` / `extra` the plan)."""
        data = asdict(self)
        data["tau"] = "inf" if math.isinf(self.tau) else self.tau
        data["span"], data["kept"] = list(self.span), self.keep if self.active else self.entering
        data["leaving"] = self.leaving
        return data


def stored_decimal(value: Tensor) -> float:
    """The shortest decimal a 0-d float tensor stores: a float32 `0.6` reads 0.6, not
    0.6000000238 (whose `ceil(0.6 * 80)` would keep 49 tokens instead of 48)."""
    return float(str(value.detach().cpu().numpy()))


def plan_site(name: str, module: SiteModule, span: Span) -> SitePlan:
    """The plan of `module`'s site when `span` is the reducible span entering it."""
    with torch.no_grad():
        value = {key: stored_decimal(module.value(key)) for key in module.specs}
    entering, gate, kept = span[1] - span[0], value[GATE], value[KEEP]
    if module.count_mode == "keep":
        keep = min(int(kept), entering)
    elif module.count_mode == "drop":
        keep = max(entering - int(kept), 0)
    else:
        keep = keep_count(entering, min(max(kept, 0.0), 1.0))
    if module.bipartite:
        keep = max(keep, bipartite_min_kept(entering))
    theta = module.regime().theta
    extra = 1 if module.fuse else min(module.contextual, entering - keep)
    return SitePlan(name, gate > 0.5, gate, span, keep, value["gamma"], value["tau"],
                    None if theta is None else value["theta"], value["rho"], value["nu"], module.proportional, module.locality,
                    module.bipartite, module.fuse, extra, module.recycle)


class HardSite(nn.Module):
    """The hard operator of one active site (module docstring)."""

    def __init__(self, plan: SitePlan, positions: Tensor | None = None) -> None:
        super().__init__()
        self.plan = plan
        self.register_buffer("positions", positions)

    def forward(self, x: Tensor, scores: Tensor, features: Tensor | None = None,
                sizes: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        plan = self.plan
        start, end = plan.span
        transfer = transfer_inputs(scores[:, start:end], plan.keep, fuse=plan.fuse, contextual=plan.contextual,
                                   recycle=plan.recycle, bipartite=plan.bipartite, start=start)
        if plan.selects_only:
            return self._select(x, transfer.scores, sizes)
        return self._reduce(x, transfer, features, sizes)

    def _around(self, kept: Tensor, length: int) -> Tensor:
        """`[B, N']`: the tokens before the span, `kept` `[B, k]` (stream positions), those after."""
        start, end = self.plan.span
        batch, device = kept.shape[0], kept.device
        return torch.cat([torch.arange(start, device=device).expand(batch, -1), kept,
                          torch.arange(end, length, device=device).expand(batch, -1)], dim=1)

    def _select(self, x: Tensor, span_scores: Tensor, sizes: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A prune: the slots `reduce_tokens` would keep (`hard_keep`), ONE gather of the stream."""
        slots, _ = hard_keep(span_scores, self.plan.keep, span_scores, None)
        kept_idx = self._around(slots + self.plan.span[0], x.shape[1])
        out = x.gather(1, kept_idx[..., None].expand(-1, -1, x.shape[2]))
        dtype = compute_dtype(x.dtype)
        out_sizes = x.new_ones(kept_idx.shape, dtype=dtype) if sizes is None else sizes.to(dtype).gather(1, kept_idx)
        bias = valid_bias(out_sizes, self.plan.proportional)
        return out, kept_idx, out_sizes, bias

    def _reduce(self, x: Tensor, transfer: Transfer, features: Tensor | None,
                sizes: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Any other corner: `reduce_tokens` on the span alone; the tokens around it pass through."""
        plan = self.plan
        start, end = plan.span
        result = reduce_tokens(x[:, start:end], range(end - start), transfer.scores, keep=plan.keep + plan.contextual,
                               regime=plan.regime(), sizes=None if sizes is None else sizes[:, start:end],
                               positions=self.positions, dest_eligible=transfer.dest_eligible,
                               source_weights=transfer.source_weights,
                               features=None if features is None else features[:, start:end])
        stream_idx = result.kept_idx + start
        if plan.fuse:  # the fused token (-1) takes the span's last token's side tensors
            stream_idx = torch.where(result.kept_idx < 0, end - 1, stream_idx)
        kept_idx = self._around(stream_idx, x.shape[1])
        out = torch.cat([x[:, :start], result.x, x[:, end:]], dim=1)
        carried = x.new_ones(x.shape[:2], dtype=result.sizes.dtype) if sizes is None else sizes.to(result.sizes.dtype)
        out_sizes = torch.cat([carried[:, :start], result.sizes, carried[:, end:]], dim=1)
        around = valid_bias(carried, plan.proportional)
        bias = torch.cat([around[:, :start], result.attn_bias, around[:, end:]], dim=1)
        return out, kept_idx, out_sizes, bias
