"""Attach a FLOPs formula to every node and build the model's symbolic `Cost`.

Runs on a traced graph with its block map, optionally with bound sites (pass 1) and their
scores (pass 2); a relaxed graph (pass 3) costs what it would emit, and an emitted graph
(pass 4, no sites given) costs what it computes. `deos_dsl.cost.tokens.TokenPropagation`
walks the graph: the symbolic shape of every node (token counts in the cost symbols, each
site's tokens replaced by its symbol downstream) and its FLOPs from the registry
(`deos_dsl.cost.formulas`). Aggregation is by `nn_module_stack`: every node belongs to its
block (or `outside`), a site's score nodes (a light attention pass included) and its operator
to the site. Dead nodes (that
cleanup, pass 5, removes from every emitted graph, `live_nodes`: e.g. what HF LLaVA's vision
tower computes after the layer it reads, when the release does not return it) get their
formula but are not counted: `Cost.dead` sums them.

Shape (torch.fx `PassBase`): `requires` checks the block map and the sites belong to the graph
and every site has its scores; `call` writes `meta['deos_flops']` (`kind -> sympy expression`,
empty for a free node) on every call node and builds `self.cost`; the graph itself is never
edited (`modified=False`); `ensures` checks the graph is unchanged and every call node has its
formula.
"""

from __future__ import annotations

import sympy
from torch import fx
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from deos_dsl.compiler.blocks import BlockMap
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.sites import BoundSite, SiteScores, live_nodes, scored_site
from deos_dsl.cost.formulas import Conventions
from deos_dsl.cost.model import Cost, GroupCost, SiteCost
from deos_dsl.cost.propagate import Costs, add_costs
from deos_dsl.cost.tokens import TokenPropagation
from deos_dsl.errors import CostError

META_COST = "deos_flops"
OUTSIDE = "outside"
CALLS = ("call_function", "call_method", "call_module")


class AttachCost(PassBase):
    """Cost `block_map`'s graph (module docstring); the result is `self.cost`."""

    def __init__(self, block_map: BlockMap, sites: list[BoundSite] | None = None,
                 scores: dict[str, SiteScores] | None = None, modules: dict[str, SiteModule] | None = None,
                 conventions: Conventions = Conventions(), model_name: str = "", space_name: str = "") -> None:
        self.block_map, self.sites, self.scores, self.modules = block_map, list(sites or []), dict(scores or {}), modules
        self.conventions, self.names = conventions, (model_name, space_name)
        self.cost: Cost | None = None
        self._code = ""

    def requires(self, graph_module: fx.GraphModule) -> None:
        nodes = set(graph_module.graph.nodes)
        if graph_module is not self.block_map.graph_module or any(b.exit not in nodes for b in self.block_map.blocks()):
            raise ValueError("attach_cost: the block map was built for another graph")
        if any(site.node not in nodes for site in self.sites):
            raise ValueError("attach_cost: the sites were bound to another graph")
        missing = [site.name for site in self.sites if site.name not in self.scores]
        if missing:
            raise ValueError(f"attach_cost: no scores for site(s) {', '.join(missing)} (run insert_scores first)")
        self._code = graph_module.code

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        try:
            walk = TokenPropagation(self.block_map, self.sites, self.scores, self.modules, self.conventions)
            walk.run(graph_module)
        except GuardOnDataDependentSymNode as error:  # a size with no value at trace time
            raise CostError(f"a tensor size depends on the input values ({str(error).splitlines()[0][:200]})",
                            "the cost is derived from shapes alone; a model that selects inputs by value (e.g. drops "
                            "padding images) has data-dependent sizes: report the model") from None
        groups: dict[str, Costs] = {block.path: {} for block in self.block_map.blocks()}
        groups[OUTSIDE] = {}
        scores: dict[str, Costs] = {site.name: {} for site in self.sites}
        live, dead = live_nodes(graph_module), {}
        for node in graph_module.graph.nodes:
            if node.op not in CALLS:
                continue
            costs = walk.costs.get(node, {})
            node.meta[META_COST] = costs
            if node not in live:
                add_costs(dead, costs)
                continue
            site = scored_site(node)
            if site in scores:
                add_costs(scores[site], costs)
            else:
                block = walk.owner.get(node)
                add_costs(groups[block.path if block is not None else OUTSIDE], costs)
        blocks = [GroupCost(b.path, b.role, walk.length(b), groups[b.path]) for b in self.block_map.blocks()]
        blocks.append(GroupCost(OUTSIDE, None, None, groups[OUTSIDE]))
        sites = [SiteCost(t.site.name, t.site.block.path, t.site.block.role, t.symbol, t.gate, t.tokens_in, t.entering,
                          t.tokens_out, scores[t.site.name], t.operator) for t in walk.sites]
        symbols = {t.symbol for t in walk.sites}
        base = {s: v for s, v in walk.shapes.values.items() if s not in symbols and isinstance(s, sympy.Symbol)}
        self.cost = Cost(*self.names, blocks, sites, base, self.conventions, walk.uncounted, dead)
        return PassResult(graph_module, False)  # only node.meta changes

    def ensures(self, graph_module: fx.GraphModule) -> None:
        graph_module.graph.lint()
        if graph_module.code != self._code:
            raise AssertionError("attach_cost changed the graph")
        if any(META_COST not in node.meta for node in graph_module.graph.nodes if node.op in CALLS):
            raise AssertionError("attach_cost: a call node has no formula")


def attach_cost(block_map: BlockMap, sites: list[BoundSite] | None = None, scores: dict[str, SiteScores] | None = None,
                modules: dict[str, SiteModule] | None = None, conventions: Conventions = Conventions(),
                model_name: str = "", space_name: str = "") -> Cost:
    """Run `AttachCost` on the block map's graph; returns the `Cost`."""
    passed = AttachCost(block_map, sites, scores, modules, conventions, model_name, space_name)
    passed(block_map.graph_module)
    assert passed.cost is not None
    return passed.cost
