"""Pass 1: bind the site selectors of a space to stream nodes of the traced graph.

A site reduces in each block its selectors match, at its `at:` position (docs/language.md):
the bound node is that block's stream `[B, N, D]` there (`deos_dsl.compiler.positions`: the
block's `exit` after it, its `entry` before it, the attention's residual stream `mid`). Which
blocks a selector matches is `deos_dsl.compiler.selectors` (role lists, depth percents, slices,
module globs); a block with no `mid` point is a positioned diagnostic like a bad selector.

Shape (torch.fx `PassBase`): `requires` checks the block map belongs to the graph and that no
earlier binding exists; `call` resolves every selector, raising ONE `SpaceError` with a
positioned diagnostic (and a did-you-mean hint from the model's real roles and paths) for each
bad selector or position, then writes `node.meta[META_SITE]` on every bound node; `ensures` checks the
graph is unchanged (same nodes, `lint()` passes) and every bound node carries its annotation.
"""

from __future__ import annotations

from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from deos_dsl.compiler.blocks import BlockMap
from deos_dsl.compiler.positions import site_stream
from deos_dsl.compiler.selectors import raise_diagnostics, report_at, select
from deos_dsl.compiler.sites import META_SITE, BoundSite
from deos_dsl.errors import Diagnostic
from deos_dsl.frontend import ir
from deos_dsl.frontend.formatter import format_site_key


class BindSites(PassBase):
    """Bind `space`'s sites to `block_map`'s boundary nodes; the result is in `self.sites`."""

    def __init__(self, space: ir.Space, block_map: BlockMap) -> None:
        self.space, self.block_map = space, block_map
        self.sites: list[BoundSite] = []
        self._node_count = 0

    def requires(self, graph_module: fx.GraphModule) -> None:
        nodes = set(graph_module.graph.nodes)
        if graph_module is not self.block_map.graph_module or any(b.exit not in nodes for b in self.block_map.blocks()):
            raise ValueError("bind_sites: the block map was built for another graph")
        if any(META_SITE in node.meta for node in nodes):
            raise ValueError("bind_sites: the graph already has bound sites")
        self._node_count = len(nodes)

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        diagnostics: list[Diagnostic] = []
        sites: dict[tuple[str, int], BoundSite] = {}
        for site_index, site in enumerate(self.space.sites):
            for selector in site.selectors:
                for block in select(selector, self.block_map, diagnostics):
                    node = site_stream(block, site.position)
                    if node is None:
                        report_at(diagnostics, site, f"block `{block.path}` has no point between its attention and its "
                                  "MLP that the rest of the block reads the stream through (no attention, or attention "
                                  "and MLP side by side): `at: mid` cannot bind there",
                                  "use `at: after` (the block's output) or `at: before`")
                        continue
                    sites.setdefault((block.path, site_index),
                                     BoundSite(site_index, format_site_key([selector]), block, node, site.position))
        raise_diagnostics(diagnostics)
        order = {node: i for i, node in enumerate(graph_module.graph.nodes)}
        self.sites = sorted(sites.values(), key=lambda s: (order[s.node], s.site_index))
        for site in self.sites:
            site.node.meta.setdefault(META_SITE, []).append(
                {"name": site.name, "site": site.site_index, "selector": site.selector, "role": site.block.role,
                 "at": site.position})
        return PassResult(graph_module, False)  # only node.meta changes; the graph is untouched

    def ensures(self, graph_module: fx.GraphModule) -> None:
        graph_module.graph.lint()
        if len(graph_module.graph.nodes) != self._node_count:
            raise AssertionError("bind_sites changed the graph's nodes")
        if any(site.site_index not in [r["site"] for r in site.node.meta.get(META_SITE, [])] for site in self.sites):
            raise AssertionError("bind_sites: a bound node lost its annotation")


def bind_sites(space: ir.Space, block_map: BlockMap) -> list[BoundSite]:
    """Run `BindSites` on the block map's graph; returns the bound sites in graph order."""
    bind = BindSites(space, block_map)
    bind(block_map.graph_module)
    return bind.sites
