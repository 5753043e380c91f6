"""The compile pipeline: the passes of `deos_dsl.passes`, in their order, on one space and model.

    bound = bind_model(space, loaded)      # trace, block map, then `bind`: pass 1 (bind_sites),
                                           # pass 2 (insert_scores), each site's SiteModule
    relax(bound)                           # pass 3 (insert_relaxed): the search graph
    plans, lengths = discretise(bound)     # pass 4 (discretise), 5 (cleanup), 6 (verify)
    cost = attach_cost(bound)              # the symbolic cost of the bound graph

Every caller (emit, cost, search, study, `deos compile`) goes through these functions; the
results of the passes travel on the graph (node meta, `deos_dsl.compiler.sites`) and in the
one `Bound` they return. Passes never import each other; only this module orders them.
"""

from __future__ import annotations

from dataclasses import dataclass

from deos_dsl.compiler.blocks import BlockMap, build_block_map
from deos_dsl.compiler.hard_site import SitePlan, plan_site
from deos_dsl.compiler.models import LoadedModel
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.sites import BoundSite, SiteScores, site_module
from deos_dsl.compiler.trace import TRACERS, TracedModel, trace
from deos_dsl.cost import Conventions, Cost
from deos_dsl.frontend import ir
from deos_dsl.passes import attach_cost as attach_cost_pass
from deos_dsl.passes.bind_sites import bind_sites
from deos_dsl.passes.cleanup import cleanup
from deos_dsl.passes.discretise import discretise as discretise_pass
from deos_dsl.passes.insert_relaxed import insert_relaxed
from deos_dsl.passes.insert_scores import insert_scores
from deos_dsl.passes.verify import verify


@dataclass
class Bound:
    """A space bound on a traced model: its block map (whose graph the passes edit in place),
    the bound sites in graph order, their scores and their site modules (`modules[site name]`:
    from the space's IR, or from the settings given, e.g. a searched schedule's)."""

    space: ir.Space
    block_map: BlockMap
    sites: list[BoundSite]
    scores: dict[str, SiteScores]
    modules: dict[str, SiteModule]

    @property
    def traced(self) -> TracedModel:
        return self.block_map.traced

    def plans(self) -> dict[str, SitePlan]:
        """Each site's discrete decision (its span before any other site)."""
        return {site.name: plan_site(site.name, self.modules[site.name], self.scores[site.name].span)
                for site in self.sites}

    def active(self) -> set[str]:
        """The sites whose gate is on."""
        return {name for name, plan in self.plans().items() if plan.active}


def bind(space: ir.Space, block_map: BlockMap, settings: dict[str, ir.SiteSettings] | None = None) -> Bound:
    """Passes 1-2 on `block_map`'s graph and each site's module (`settings[site name]` in place
    of the space's settings where given). Raises `SpaceError` / `DeosCompileError`."""
    sites = bind_sites(space, block_map)
    scores = insert_scores(space, block_map, sites)
    modules = {site.name: site_module(space, site, scores[site.name], (settings or {}).get(site.name)) for site in sites}
    return Bound(space, block_map, sites, scores, modules)


def bind_traced(space: ir.Space, traced: TracedModel, roles: dict[str, str] | None = None,
                spans: dict[str, tuple[int, int]] | None = None,
                settings: dict[str, ir.SiteSettings] | None = None) -> Bound:
    """`bind` on the block map of `traced` (`roles` / `spans` override what it infers)."""
    return bind(space, build_block_map(traced, roles or {}, spans or {}), settings)


def bind_model(space: ir.Space, loaded: LoadedModel, tracers: tuple[str, ...] = TRACERS,
               settings: dict[str, ir.SiteSettings] | None = None) -> Bound:
    """`bind_traced` on `loaded` traced with the first of `tracers` that works."""
    traced = trace(loaded.model, loaded.args, loaded.kwargs, tracers=tracers)
    return bind_traced(space, traced, loaded.roles, loaded.spans, settings)


def relax(bound: Bound) -> None:
    """Pass 3: call each site's module (`bound.modules`) on its stream, in the graph."""
    insert_relaxed(bound.space, bound.block_map, bound.sites, bound.scores, bound.modules)


def discretise(bound: Bound) -> tuple[dict[str, SitePlan], dict[str, tuple[int, int]]]:
    """Passes 4-6 on the bound graph: the hard sites planned from `bound.modules`, dead code
    removed, the reduced lengths checked; returns the plans and each active site's (N_in, N_out)."""
    plans, calls = discretise_pass(bound.block_map, bound.sites, bound.scores, bound.modules)
    cleanup(bound.block_map.graph_module)
    return plans, verify(bound.traced, calls, plans)


def attach_cost(bound: Bound, conventions: Conventions = Conventions(), model_name: str = "") -> Cost:
    """The symbolic cost of the bound graph (its sites' scores and operators included)."""
    return attach_cost_pass.attach_cost(bound.block_map, bound.sites, bound.scores, bound.modules, conventions,
                                        model_name, bound.space.name)
