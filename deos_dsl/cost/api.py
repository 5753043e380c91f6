"""Entry points: the cost of a space on a model, and the search's differentiable FLOPs.

`cost_space(space, loaded)` traces the model, maps its blocks, binds the space's sites,
inserts their scores (pass 1 and 2, so that each site's score is costed) and runs
`attach_cost`; it returns the `Cost` and the space's own schedule. `search_flops(block_map,
sites, scores)` costs a relaxed search graph and returns its `CostFunction` (the FLOPs at the
reducible counts leaving each site, `dense` the dense model's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deos_dsl.compiler import BlockMap, LoadedModel, build_block_map, trace
from deos_dsl.frontend import ir

from .formulas import Conventions
from .model import Cost, CostFunction, SitePoint
from .schedule import default_schedule

if TYPE_CHECKING:  # the passes import deos_dsl.cost: imported where they run
    from deos_dsl.passes.bind_sites import BoundSite
    from deos_dsl.passes.insert_scores import SiteScores


def cost_space(space: ir.Space, loaded: LoadedModel,
               conventions: Conventions = Conventions()) -> tuple[Cost, dict[str, SitePoint]]:
    """`(cost, default schedule)` of `space` on `loaded` (module docstring); raises
    `DeosCompileError` / `DeosError` as `deos compile` does."""
    from deos_dsl.passes.attach_cost import attach_cost
    from deos_dsl.passes.bind_sites import bind_sites
    from deos_dsl.passes.insert_relaxed import site_module
    from deos_dsl.passes.insert_scores import insert_scores

    traced = trace(loaded.model, loaded.args, loaded.kwargs)
    block_map = build_block_map(traced, loaded.roles, loaded.spans)
    sites = bind_sites(space, block_map)
    scores = insert_scores(space, block_map, sites)
    modules = {site.name: site_module(space, site, scores[site.name]) for site in sites}
    cost = attach_cost(block_map, sites, scores, modules, conventions, loaded.name, space.name)
    return cost, default_schedule(cost, modules)


def search_flops(block_map: BlockMap, sites: list[BoundSite], scores: dict[str, SiteScores]) -> CostFunction:
    """The reduced FLOPs of a relaxed search graph as a torch function of the leaving counts."""
    from deos_dsl.passes.attach_cost import attach_cost

    return attach_cost(block_map, sites, scores).torch_function()
