"""The constraint quantities of a bound space: expected (differentiable, for the search) and
discrete (exact, for discretisation), from one token-flow model.

Token flow. Sites reduce the reducible tokens of a CHAIN: the sites of one block stack in
graph order; a projector site heads the decoder's chain (its output is the decoder's visual
span, as the relaxed graph carries it, `passes/insert_relaxed.py`). The vision chain FEEDS the
decoder's when the model has both stacks and the vision encoder's reducible span is as long as
the decoder's visual span (a LLaVA-style 1:1 projector; embedded: 144 = 144): the decoder's
chain then starts with the count the vision chain leaves, the tokens the emitted graph passes
on (the relaxed graph carries that reduction across the projector: `passes/insert_relaxed.py`,
`BlockMap.vision_feeds_decoder` deciding both). Each site maps the count
ENTERING it to the count LEAVING it: discrete `keep` plus its extra tokens when active (else
unchanged); expected `entering + E[z] * (kept(entering) - entering)` with `E[z]` the expected
relaxed gate and `kept` the module's keep rule (`SiteModule.keep_ratio`: a ratio of the
entering tokens, or a fixed count / drop).

Quantities (shares of the chain's reducible span `n`, whatever unit the bound is written in):
- `tokens.mean`: the LAYER-AVERAGED share of reducible tokens entering the layers of the
  budget stack (the decoder; a vision-only model's encoder), as SparseVLM counts budgets:
  `mean_l entering_l / n`, where a site at the output of layer `j` (or between its attention
  and MLP, `at: mid`) changes layers `> j`, one `before` layer `j` layers `>= j`, and a
  projector site every layer;
- `tokens.after(SELECTOR)`: the share leaving each selected block (one limit per block);
- `flops`: the cost model's FLOPs at the counts leaving each site and the sites' gates (`FlopsModel`).
Violation of a limit with value `v` and target `t`: `v / t - 1` for `<=`, `1 - v / t` for
`>=` (positive = violated). A discrete value meets a limit EXACTLY when `v <= t` (`>=`: `v >= t`)
up to a relative 1e-12 that absorbs the float representation of the target only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, TypeVar

import torch
from torch import Tensor

from deos_dsl.compiler.blocks import BlockMap
from deos_dsl.compiler.selectors import select_blocks
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.sites import BoundSite, SiteScores
from deos_dsl.errors import SearchError
from deos_dsl.frontend import ir
from deos_dsl.frontend.formatter import format_constraint

N = TypeVar("N", int, Tensor)  # a token count: an int (discrete) or a tensor (expected)
EXACT = 1e-12


class FlopsModel(Protocol):
    """The symbolic cost model seen by the search (`deos_dsl.cost.search_flops`): the FLOPs at
    the reducible counts leaving each site and each site's gate (its overhead is paid in
    proportion), differentiable in both; `dense` the dense model's FLOPs."""

    dense: float

    def __call__(self, leaving: dict[str, Tensor], gates: dict[str, Tensor] | None = None) -> Tensor: ...


@dataclass(frozen=True)
class FlowSite:
    """One site on its chain: `layer` is the last layer that sees all its tokens (`BoundSite.layer`;
    `-1`: a projector, before every layer)."""

    name: str
    chain: str
    layer: int
    n: int


@dataclass(frozen=True)
class Limit:
    """One constraint as the search sees it: `target` is a share (tokens.*) or FLOPs."""

    label: str
    quantity: str
    upper: bool
    target: float
    chain: str = ""
    layer: int = 0

    def violation(self, value: N | float) -> N | float:
        return value / self.target - 1 if self.upper else 1 - value / self.target

    def show(self, value: float) -> str:
        """`value` in words: a percent of the reducible tokens, or FLOPs with a unit prefix."""
        if self.quantity != "flops":
            return f"{value * 100:.4g}% of the reducible tokens"
        unit = next((u for u in ("TFLOP", "GFLOP", "MFLOP", "KFLOP") if abs(value) >= ir.FLOP_SCALE[u]), "FLOP")
        return f"{value / ir.FLOP_SCALE[unit]:.4g} {unit}"

    def met(self, value: float) -> bool:
        return value <= self.target * (1 + EXACT) if self.upper else value >= self.target * (1 - EXACT)


def expected_leaving(module: SiteModule, entering: Tensor, gate: Tensor) -> Tensor:
    """Expected span tokens leaving `module`'s site: `entering + E[z] * (kept - entering)`, with
    `kept` its keep rule at `entering` plus its contextual targets (`into: extra(n)`)."""
    n = module.span[1] - module.span[0]
    kept = module.keep_ratio(entering.reshape(1))[0] * n
    kept = kept + torch.minimum(torch.full_like(kept, float(module.contextual)), entering - kept)
    return entering + gate * (kept - entering)


def discrete_leaving(module: SiteModule, entering: int, keep: int, active: bool) -> int:
    """Span tokens leaving an active site keeping `keep`, else `entering`: plus its contextual
    targets (`into: extra(n)`, n > 1), or the ONE token it fuses the others into (`into:
    extra(1)`, added even when nothing is dropped), as `plan_site` counts them."""
    if not active:
        return entering
    return keep + (1 if module.fuse else min(module.contextual, entering - keep))


class TokenFlow:
    """The chains of a bound space (module docstring) and the quantities computed from them:
    `sites` in graph order, `chain` / `layers` / `n` the budget stack's prefix, layer count and
    reducible span length. `feeds[chain]` is the chain whose last site's leaving count enters
    `chain` (the vision chain feeding the decoder's on a 1:1 projector, module docstring);
    every other chain starts at its span. Feeding chains come first in graph order."""

    def __init__(self, sites: list[FlowSite], chain: str, layers: int, n: int,
                 feeds: dict[str, str] | None = None) -> None:
        self.sites, self.chain, self.layers, self.n = sites, chain, layers, n
        self.feeds = feeds or {}

    @classmethod
    def of(cls, block_map: BlockMap, sites: list[BoundSite], scores: dict[str, SiteScores]) -> TokenFlow:
        """The flow of `sites` bound on `block_map` (spans from `scores`)."""
        decoder, projector = block_map.stack("decoder"), block_map.projector
        budget = decoder or (block_map.stacks[0] if block_map.stacks else None)
        flow_sites = []
        for site in sites:
            on_projector = projector is not None and site.block is projector
            chain = (decoder.prefix if decoder else site.block.path) if on_projector else site.block.stack
            start, end = scores[site.name].span
            flow_sites.append(FlowSite(site.name, chain, -1 if on_projector else site.layer, end - start))
        chain = budget.prefix if budget else ""
        span = block_map.spans.get(budget.role or "") if budget else None
        on_chain = [s.n for s in flow_sites if s.chain == chain]
        n = span[1] - span[0] if span else (on_chain[0] if on_chain else 1)
        return cls(flow_sites, chain, len(budget.blocks) if budget else 0, n, _feeds(block_map))

    def span_of(self, chain: str) -> int:
        return next((s.n for s in self.sites if s.chain == chain), self.n)

    def chain_start(self, counts: dict[str, tuple[N, N]], chain: str) -> N | int:
        """Tokens entering `chain` before its first site: what the last site of the chain feeding
        it left (among `counts`), else the chain's span."""
        feeder = self.feeds.get(chain)
        left = [counts[s.name][1] for s in self.sites if s.chain == feeder and s.name in counts]
        return left[-1] if left else self.span_of(chain)

    def through(self, leave: Callable[[FlowSite, N], N]) -> dict[str, tuple[N, N]]:
        """`site -> (entering, leaving)` counts, `leave(site, entering)` applied in chain order."""
        current: dict[str, N] = {}
        counts: dict[str, tuple[N, N]] = {}
        for site in self.sites:
            entering = current[site.chain] if site.chain in current else self.chain_start(counts, site.chain)
            current[site.chain] = leave(site, entering)
            counts[site.name] = (entering, current[site.chain])
        return counts

    def share_after(self, counts: dict[str, tuple[N, N]], chain: str, layer: int) -> N | float:
        """Share of `chain`'s span left after its block `layer` (and every site before it, the
        chain feeding it included)."""
        left = [counts[s.name][1] for s in self.sites if s.chain == chain and s.layer <= layer]
        return (left[-1] if left else self.chain_start(counts, chain)) / self.span_of(chain)

    def mean_share(self, counts: dict[str, tuple[N, N]]) -> N | float:
        """`tokens.mean`: the share entering each layer of the budget stack, averaged."""
        shares = [self.share_after(counts, self.chain, layer - 1) for layer in range(self.layers)]
        return sum(shares) / max(self.layers, 1)


def _feeds(block_map: BlockMap) -> dict[str, str]:
    """`{decoder chain: vision chain}` on a 1:1 projector (`BlockMap.vision_feeds_decoder`), else `{}`."""
    vision, decoder = block_map.stack("vision"), block_map.stack("decoder")
    if vision is None or decoder is None or not block_map.vision_feeds_decoder:
        return {}
    return {decoder.prefix: vision.prefix}


class Constraints:
    """The limits of a space on a bound model and their values for a token flow."""

    def __init__(self, flow: TokenFlow, limits: list[Limit], flops: FlopsModel | None = None) -> None:
        self.flow, self.limits, self.flops = flow, limits, flops

    @classmethod
    def of(cls, space: ir.Space, block_map: BlockMap, flow: TokenFlow, flops: FlopsModel | None) -> Constraints:
        """The limits of `space`'s constraints on `block_map` (`flops`: the cost model, if any)."""
        limits = [limit for constraint in space.constraints for limit in cls._limits(constraint, block_map, flow, flops)]
        return cls(flow, limits, flops)

    @classmethod
    def _limits(cls, constraint: ir.Constraint, block_map: BlockMap, flow: TokenFlow, flops: FlopsModel | None) -> list[Limit]:
        label = format_constraint(constraint).removeprefix("constraint ")
        bound = constraint.bound
        assert isinstance(bound, ir.Num), "constraints come from a resolved space"
        upper = constraint.op == "<="
        if constraint.quantity == "flops":
            if flops is None:
                raise SearchError(f"`{label}` needs the symbolic cost model (deos_dsl.cost), which is not available",
                                  "remove the FLOPs constraint from the space, or install a deos with the cost model")
            scale = flops.dense if bound.unit == "dense" else ir.FLOP_SCALE[bound.unit]
            return [Limit(label, "flops", upper, bound.value * scale)]
        if constraint.quantity == "tokens.mean":
            return [Limit(label, "tokens.mean", upper, cls._share(bound, flow.n), flow.chain)]
        assert constraint.site is not None
        limits = []
        decoder = block_map.stack("decoder")
        for block in select_blocks(constraint.site, block_map):
            on_projector = block is block_map.projector
            chain = (decoder.prefix if decoder else block.path) if on_projector else block.stack
            limits.append(Limit(f"{label} at {block.path}", "tokens.after", upper,
                                cls._share(bound, flow.span_of(chain)), chain, -1 if on_projector else block.index))
        return limits

    @staticmethod
    def _share(bound: ir.Num, n: int) -> float:
        return bound.value / 100 if bound.unit == "%" else bound.value / n

    def values(self, counts: dict[str, tuple[N, N]], gates: dict[str, Tensor] | None = None) -> list[N | float]:
        """Each limit's value (a share, or FLOPs) for the `counts` of `TokenFlow.through` and the
        sites' `gates` (expected, or 0 / 1; FLOPs only)."""
        values: list[N | float] = []
        for limit in self.limits:
            if limit.quantity == "tokens.mean":
                values.append(self.flow.mean_share(counts))
            elif limit.quantity == "tokens.after":
                values.append(self.flow.share_after(counts, limit.chain, limit.layer))
            else:
                assert self.flops is not None
                leaving = {name: torch.as_tensor(left, dtype=torch.float64) for name, (_, left) in counts.items()}
                values.append(self.flops(leaving, gates))
        return values
