"""The graphs a search runs: the relaxed graph of a space on a model, and the dense reference.

`build_search_graph(space, loaded)` traces the model (`torch.fx.symbolic_trace` first: its
reshapes read sizes from their input, so one graph serves every batch size; `torch.export`
otherwise), binds the space's sites, inserts scores and the relaxed `SiteModule`s
(`deos_site_<i>`, passes 1-3), and makes the graph return `(model output, hidden, stream)`:
`hidden [B, N, D]` the final hidden states (the stream leaving the last layer of the budget
stack, after any site there) and `stream` the stream entering the FIRST site.

The dense reference is a second trace of the same frozen model cut at that first site: the
node of the stream is replaced by a new last input and what only fed it is removed, so
`dense(*inputs, stream) -> (model output, hidden)` recomputes nothing that precedes the first
site (the vision tower, for a projector site): the relaxed graph's `stream` is that value.

`install` swaps the site modules of the relaxed graph (e.g. the discrete modules of a
schedule, for validation); the model itself is never modified and stays frozen.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, fx

from deos_dsl.compiler.blocks import Block, BlockMap, build_block_map
from deos_dsl.compiler.models import LoadedModel
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.sites import RELAXED_PREFIX, BoundSite, SiteScores
from deos_dsl.compiler.trace import EXPORT, LANGUAGE_MODEL, SYMBOLIC, trace
from deos_dsl.errors import DeosCompileError
from deos_dsl.frontend import ir
from deos_dsl.pipeline import Bound, bind_model, relax

from .constraints import TokenFlow

TRACERS = (SYMBOLIC, EXPORT, LANGUAGE_MODEL)


@dataclass
class SearchGraph:
    """The relaxed graph of `space` on `loaded`, its sites and the dense reference graph (cut
    at the first site, module docstring).

    `modules[site]` is the SiteModule called as `deos_site_<i>` (i = the site's position in
    `sites`); `protected` are the stream positions outside the budget span (the alignment
    is computed on them; every position when none is protected).
    """

    bound: Bound
    loaded: LoadedModel
    flow: TokenFlow
    dense: fx.GraphModule
    protected: Tensor

    @property
    def space(self) -> ir.Space:
        return self.bound.space

    @property
    def block_map(self) -> BlockMap:
        return self.bound.block_map

    @property
    def sites(self) -> list[BoundSite]:
        return self.bound.sites

    @property
    def scores(self) -> dict[str, SiteScores]:
        return self.bound.scores

    @property
    def modules(self) -> dict[str, SiteModule]:
        return self.bound.modules

    @property
    def gm(self) -> fx.GraphModule:
        return self.block_map.graph_module

    def submodule(self, name: str) -> str:
        """The graph attribute holding site `name`'s module."""
        return f"{RELAXED_PREFIX}{[site.name for site in self.sites].index(name)}"


def _last_block(block_map: BlockMap) -> Block:
    budget = block_map.stack("decoder") or block_map.stacks[-1]
    return budget.blocks[-1]


def _stream_after(node: fx.Node) -> fx.Node:
    """The stream that later nodes read for `node`: past every relaxed site called on it."""
    while True:
        call = next((u for u in node.users if u.op == "call_module" and str(u.target).startswith(RELAXED_PREFIX)), None)
        if call is None:
            return node
        node = next(u for u in call.users if u.args[1] == 0)


def _expose(gm: fx.GraphModule, *nodes: fx.Node) -> None:
    """Make `gm` return `(its output, *nodes)`."""
    output = gm.graph.output_node()
    output.args = ((output.args[0], *nodes),)
    gm.graph.lint()
    gm.recompile()


def _cut_before(gm: fx.GraphModule, stream: fx.Node) -> None:
    """Replace `stream` by a new last input and drop the nodes that only computed it."""
    first = next(node for node in gm.graph.nodes if node.op != "placeholder")
    with gm.graph.inserting_before(first):
        given = gm.graph.placeholder("site_stream")
    given.meta = dict(stream.meta)
    stream.replace_all_uses_with(given)
    gm.graph.eliminate_dead_code(is_impure_node=lambda node: node.op in ("placeholder", "output"))
    gm.graph.lint()
    gm.recompile()


def build_search_graph(space: ir.Space, loaded: LoadedModel) -> SearchGraph:
    """Trace, bind, score and relax (module docstring); raises `DeosCompileError` / `SpaceError`."""
    bound = bind_model(space, loaded, TRACERS)
    if not bound.block_map.stacks:
        raise DeosCompileError("the model has no block stack to search over")
    if not bound.sites:
        raise DeosCompileError(f"space `{space.name}` has no site to search", "add a `site` to the space")
    relax(bound)
    block_map, sites = bound.block_map, bound.sites
    last = _last_block(block_map)
    _expose(block_map.graph_module, _stream_after(last.exit), sites[0].node)
    dense_map = build_block_map(trace(loaded.model, loaded.args, loaded.kwargs, tracers=TRACERS), loaded.roles, loaded.spans)
    _expose(dense_map.graph_module, _last_block(dense_map).exit)
    first = next(block for block in dense_map.blocks() if block.path == sites[0].block.path)
    _cut_before(dense_map.graph_module, first.exit)
    flow = TokenFlow.of(block_map, sites, bound.scores)
    length = int(last.exit.meta["val"].shape[1])
    span = block_map.spans.get(last.role or "") or (0, 0)
    protected = torch.tensor([not span[0] <= i < span[1] for i in range(length)])
    if not protected.any():
        protected = torch.ones(length, dtype=torch.bool)
    return SearchGraph(bound, loaded, flow, dense_map.graph_module, protected)


@contextmanager
def installed(graph: SearchGraph, modules: dict[str, SiteModule]) -> Iterator[None]:
    """Run the relaxed graph with `modules` in place of its own site modules, then restore them."""
    previous = {name: getattr(graph.gm, graph.submodule(name)) for name in modules}
    try:
        for name, module in modules.items():
            setattr(graph.gm, graph.submodule(name), module)
        yield
    finally:
        for name, module in previous.items():
            setattr(graph.gm, graph.submodule(name), module)

