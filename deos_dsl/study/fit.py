"""Fit a hand-designed baseline space to a token budget (the baseline study).

A BASELINE is a space with at least one site, every site fixed: gate `on` / `off`, a fixed
retain (a ratio, `K tokens` or `drop R tokens`), a score and an operator with nothing learned;
any other space learns its schedule and is searched, not fitted (`StudyError`).

The fitting rule (a documented decision): tokens.mean is the DISCRETE value (`TokenFlow`, the
discretiser's counts) on the model, and the fitted space keeps as many tokens as the rule
allows within the budget.
1. Scale. One knob `a >= 0` moves all the sites of a baseline together: a fixed keep RATIO `r`
   (`N%` or a plain ratio, 0 < r < 1) becomes `r ** a`, written in percent with 4 decimals (6
   significant digits: the compiler's float32 keeps it exactly; at least 0.0001%, so a scaled
   site keeps >= 1 token); `drop R tokens` becomes `drop round(a R) tokens`. Token counts,
   `retain: 100%` and sites with a `window` locality (the window fixes the keep: pool2x2) are
   not scaled; a baseline with no scaled site has scale 1. `a = 1` is the baseline itself (its
   sites unchanged), `a = 0` keeps everything, the largest `a` puts every scaled keep at its
   floor (one token, ToMe's bipartite half). This is each method's own trade-off knob: FastV's
   R, PyramidDrop's lambda, EViT's keep rate, SparseVLM's ratios scaled together in log space,
   ToMe's r, VisionZip's dominant count. Keep counts follow `allowed_keeps` and
   `discrete_leaving`, so tokens.mean is non-increasing in `a`: bisection finds the smallest
   `a` whose tokens.mean is within the budget (the largest tokens.mean within it).
2. Cut. When even the largest `a` stays over the budget (the 4-layer embedded decoder keeps
   >= 75% with FastV's one site after layer 2) and the baseline has no projector site, a
   projector cut `site projector { activate: on; retain: K tokens; score: norm; operator:
   prune }` (norm scoring: there is no attention at the projector) goes in front of the
   baseline's own sites at `a = 1`, with the largest K whose tokens.mean is within the budget.
3. Otherwise (the baseline has a projector site, e.g. pool2x2 below 25%, or a cut to one token
   is still over): `StudyError` with the smallest tokens.mean reachable.

Each space structure is bound once (the pipeline's `bind_model`: trace, bind_sites,
insert_scores and the site modules, no relaxed graph: EViT's fused token has none), at most twice per baseline (without and with the
cut); candidates are then evaluated arithmetically with the discretiser's functions, on the
retains the fitted space writes, so `compile_emitted(fitted.space, model)` keeps exactly the
counts the fit computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from deos_dsl.compiler.models import LoadedModel
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.sites import BoundSite
from deos_dsl.errors import StudyError
from deos_dsl.frontend import ir
from deos_dsl.frontend.vocab import SCORES
from deos_dsl.pipeline import bind_model
from deos_dsl.search.constraints import EXACT, FlowSite, TokenFlow, discrete_leaving
from deos_dsl.search.discretise import allowed_keeps
from deos_dsl.search.graph import TRACERS

PERCENT_DECIMALS = 4  # a scaled ratio is written as `N%` with this many decimals (exact in float32)
SMALLEST_PERCENT = 10.0**-PERCENT_DECIMALS
SCALE_TOLERANCE = 1e-9  # bisection stops when the feasible and infeasible scales are this close


@dataclass(frozen=True)
class Fitted:
    """A baseline fitted to `budget`: the fixed `space` (the baseline's name), its discrete
    `tokens_mean` (<= budget), the exponent `scale` on its own keep ratios (1.0: its own) and
    the keep count `cut` of the projector cut in front of it (None: no cut)."""

    space: ir.Space
    budget: float
    tokens_mean: float
    scale: float
    cut: int | None

    def describe(self) -> str:
        """The fit in words: `own ratios`, `own ratios ^1.73`, `own ratios + projector cut to 40 tokens`."""
        if self.cut is not None:
            return f"own ratios + projector cut to {self.cut} tokens"
        return "own ratios" if self.scale == 1.0 else f"own ratios ^{self.scale:.3g}"


@dataclass(frozen=True)
class Structure:
    """One space structure bound on a model: its token flow, bound sites and site modules (the
    bipartite floor and the extra tokens of each site)."""

    flow: TokenFlow
    sites: list[BoundSite]
    modules: dict[str, SiteModule]

    def tokens_mean(self, sites: list[ir.Site]) -> float:
        """Discrete tokens.mean when the space's sites are `sites` (same selectors, fixed)."""
        index = {site.name: site.site_index for site in self.sites}

        def leave(flow_site: FlowSite, entering: int) -> int:
            site, module = sites[index[flow_site.name]], self.modules[flow_site.name]
            assert isinstance(site.activate, ir.ActivateFixed) and site.retain is not None, "a fixed site"
            (keep,) = allowed_keeps(site.retain, entering, module.bipartite)
            return discrete_leaving(module, entering, keep, site.activate.on)

        return float(self.flow.mean_share(self.flow.through(leave)))

    @property
    def has_projector_site(self) -> bool:
        return any(site.layer == -1 for site in self.flow.sites)


def structure(space: ir.Space, loaded: LoadedModel) -> Structure:
    """`space`'s sites bound on `loaded` (the pipeline's `bind_model`, as the search traces)."""
    bound = bind_model(space, loaded, TRACERS)
    return Structure(TokenFlow.of(bound.block_map, bound.sites, bound.scores), bound.sites, bound.modules)


def _learns(site: ir.Site) -> bool:
    """Whether `site` learns its gate, keep, score or a regime parameter."""
    return (not isinstance(site.activate, ir.ActivateFixed)
            or not isinstance(site.retain, (ir.RetainFixed, ir.RetainDrop))
            or SCORES[site.score.kind].learned
            or any(isinstance(getattr(site.operator, name), ir.LearnedParam) for name in ir.REGIME))


def is_baseline(space: ir.Space) -> bool:
    """Whether `space` is a baseline: it has sites and none of them learns anything."""
    return bool(space.sites) and not any(_learns(site) for site in space.sites)


def _check_baseline(space: ir.Space) -> None:
    """Raise `StudyError` unless `space` is a baseline (module docstring)."""
    if not space.sites:
        raise StudyError(f"`{space.name}` has no site: there is no baseline schedule to fit",
                         "add a fixed `site` to the space")
    if not is_baseline(space):
        raise StudyError(f"`{space.name}` learns its schedule: search it, do not fit it",
                         "fit a space whose sites are all fixed (gate on/off, a fixed retain, score and operator), "
                         "or run `deos search` on it")


def _knob(site: ir.Site) -> tuple[str, float] | None:
    """What the scale moves at `site`: `("ratio", r)` for a keep ratio 0 < r < 1, `("drop", R)`
    for `drop R tokens`; None for a token count, a ratio of 0 or 100% and a `window` site."""
    assert site.operator is not None and site.retain is not None, "sites come from a resolved space"
    if site.operator.window is not None or not isinstance(site.retain, (ir.RetainFixed, ir.RetainDrop)):
        return None
    amount = site.retain.amount
    assert isinstance(amount, ir.Num), "sites come from a resolved space"
    if isinstance(site.retain, ir.RetainDrop):
        return "drop", amount.value
    ratio = amount.value / 100 if amount.unit == "%" else amount.value
    return ("ratio", ratio) if amount.unit != "tokens" and 0 < ratio < 1 else None


def _scaled_site(site: ir.Site, scale: float) -> ir.Site:
    """`site` with its keep scaled by `scale` (module docstring, rule 1); unscaled sites unchanged."""
    knob = _knob(site)
    if knob is None or scale == 1.0:
        return site
    kind, value = knob
    if kind == "drop":
        amount = ir.Num(value=float(round(scale * value)), unit="tokens")
    else:
        amount = ir.Num(value=max(round(100 * value**scale, PERCENT_DECIMALS), SMALLEST_PERCENT), unit="%")
    assert site.retain is not None
    return site.model_copy(update={"retain": site.retain.model_copy(update={"amount": amount})})


def scaled_sites(space: ir.Space, scale: float) -> list[ir.Site]:
    """`space`'s sites with their keeps scaled by `scale` (module docstring, rule 1)."""
    return [_scaled_site(site, scale) for site in space.sites]


def _top_scale(space: ir.Space, span: int) -> float | None:
    """The scale at which every scaled keep is at its floor over a reducible span of `span`
    tokens (a ratio `r ** a <= 1 / (2 span)` keeps one token; a drop removes `span`), None
    when no site scales."""
    knobs = [knob for knob in map(_knob, space.sites) if knob is not None]
    return max((span / max(value, 1.0) if kind == "drop" else math.log(2 * span) / -math.log(value)
                for kind, value in knobs), default=None)


def _within(value: float, budget: float) -> bool:
    """`value <= budget` as a constraint is met (`constraints.Limit.met`)."""
    return value <= budget * (1 + EXACT)


def _smallest_scale(tokens_mean: Callable[[float], float], budget: float, top: float) -> float:
    """The smallest scale in [0, top] whose `tokens_mean` is within `budget`, to
    `SCALE_TOLERANCE` (`tokens_mean` non-increasing, within the budget at `top`)."""
    if _within(tokens_mean(0.0), budget):
        return 0.0
    lo, hi = 0.0, top
    while hi - lo > SCALE_TOLERANCE:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _within(tokens_mean(mid), budget) else (mid, hi)
    return hi


def cut_site(keep: int) -> ir.Site:
    """The projector cut keeping `keep` tokens by norm (module docstring, rule 2)."""
    return ir.Site(selectors=[ir.RoleSelector(path=["projector"])], activate=ir.ActivateFixed(on=True),
                   retain=ir.RetainFixed(amount=ir.Num(value=float(keep), unit="tokens")),
                   score=ir.Score(kind="norm"), operator=ir.Operator(form="prune"))


def _with_sites(space: ir.Space, sites: list[ir.Site]) -> ir.Space:
    return space.model_copy(update={"sites": sites})


def _out_of_reach(space: ir.Space, budget: float, smallest: float, why: str) -> StudyError:
    return StudyError(f"baseline `{space.name}` cannot reach tokens.mean <= {budget * 100:.4g}%: the smallest it "
                      f"reaches is {smallest * 100:.4g}% ({why})",
                      f"raise the budget to at least {smallest * 100:.4g}%, or leave `{space.name}` out at this budget")


def _fit_cut(space: ir.Space, budget: float, loaded: LoadedModel) -> Fitted:
    """Rule 2: the largest projector cut in front of the baseline at its own ratios."""
    bound = structure(_with_sites(space, [cut_site(1), *space.sites]), loaded)

    def tokens_mean(keep: int) -> float:
        return bound.tokens_mean([cut_site(keep), *space.sites])

    keep = next((k for k in range(bound.flow.n, 0, -1) if _within(tokens_mean(k), budget)), None)
    if keep is None:
        raise _out_of_reach(space, budget, tokens_mean(1), "with a projector cut to one token in front")
    fitted = _with_sites(space, [cut_site(keep), *space.sites])
    return Fitted(fitted, budget, bound.tokens_mean(fitted.sites), 1.0, keep)


def fit_baseline(space: ir.Space, budget: float, loaded: LoadedModel) -> Fitted:
    """`space` fitted to `tokens.mean <= budget` on `loaded` by the module docstring's rule;
    raises `StudyError` when it is no baseline or the budget is out of its reach."""
    _check_baseline(space)
    bound = structure(space, loaded)

    def tokens_mean(scale: float) -> float:
        return bound.tokens_mean(scaled_sites(space, scale))

    top = _top_scale(space, max((site.n for site in bound.flow.sites), default=bound.flow.n))
    floor = tokens_mean(1.0 if top is None else top)
    if _within(floor, budget):
        scale = 1.0 if top is None else _smallest_scale(tokens_mean, budget, top)
        fitted = _with_sites(space, scaled_sites(space, scale))
        return Fitted(fitted, budget, bound.tokens_mean(fitted.sites), scale, None)
    if bound.has_projector_site:
        raise _out_of_reach(space, budget, floor, "every scaled keep at its floor; it has a projector site already, "
                                                  "so no cut can go in front")
    return _fit_cut(space, budget, loaded)


def fixed_tokens_mean(space: ir.Space, loaded: LoadedModel) -> float:
    """The discrete tokens.mean of a baseline `space` on `loaded` (`StudyError` if it learns)."""
    _check_baseline(space)
    return structure(space, loaded).tokens_mean(space.sites)
