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

Both graphs take their inputs flat, one value per graph input (`inputs(batch)` maps a task's
batch onto them; an exported graph's pytree input and output handling is removed, and the
model's output is rebuilt from its leaves, `model_output`). A graph traced by `torch.export`
is specialised to the batch size it was traced at: the search traces at its own batch shape.

`installed` swaps the site modules of the relaxed graph, or of a split of it (e.g. the discrete
modules of a schedule, for validation); `sites_off` closes every site's gate, which makes the
relaxed graph compute the dense model (what a sharded search uses as its dense reference);
`start_keeps` sets the learned keep ratios to a fixed schedule (the warm start, `--start`);
the model itself is never modified and stays frozen.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from deos_dsl.compiler.blocks import Block, BlockMap, build_block_map
from deos_dsl.compiler.models import LoadedModel
from deos_dsl.compiler.positions import site_stream
from deos_dsl.compiler.site_module import KEEP, SiteModule
from deos_dsl.compiler.sites import RELAXED_PREFIX, BoundSite, SiteScores, short_site
from deos_dsl.compiler.trace import EXPORT, SYMBOLIC, TracedModel, placeholder_values, trace
from deos_dsl.data import Encoded
from deos_dsl.errors import DeosCompileError, SearchError
from deos_dsl.frontend import ir
from deos_dsl.pipeline import Bound, bind_model, relax

from .constraints import TokenFlow

TRACERS = (SYMBOLIC, EXPORT)


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
    out_spec: Any = None  # how the model's output leaves nest (an exported graph), else None

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

    def inputs(self, batch: Encoded, graph: fx.GraphModule | None = None) -> list[Any]:
        """The inputs of `graph` (default: the relaxed graph) for `batch`, in order."""
        traced = self.block_map.traced
        return placeholder_values(graph or self.gm, traced.root, batch.args, batch.kwargs)

    def model_output(self, output: Any) -> Any:
        """The model's own output from the graph's first output (its leaves, for an export)."""
        return output if self.out_spec is None else pytree.tree_unflatten(list(output), self.out_spec)

    def run(self, batch: Encoded, model: nn.Module | None = None) -> Any:
        """The model output of the relaxed graph (or of `model`, a split of it) on `batch`."""
        return self.model_output((model or self.gm)(*self.inputs(batch))[0])

    def run_dense(self, batch: Encoded, stream: Tensor) -> tuple[Any, Tensor]:
        """`(model output, hidden)` of the dense reference from the relaxed graph's `stream`."""
        output, hidden = self.dense(*self.inputs(batch, self.dense)[:-1], stream)  # its last input: the stream
        return self.model_output(output), hidden

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


def _flat_io(traced: TracedModel) -> Any:
    """Make an exported graph take its inputs flat and return its output leaves as they are
    (no pytree handling, no input-spec check); returns the output spec (None: plain fx)."""
    gm = traced.graph_module
    codegen = gm.graph._codegen
    spec = getattr(getattr(codegen, "pytree_info", None), "out_spec", None)
    if spec is not None:
        gm.graph.set_codegen(fx.graph.CodeGen())
        gm._forward_pre_hooks.clear()
        gm.recompile()
    return spec


def _expose(gm: fx.GraphModule, *nodes: fx.Node) -> None:
    """Make `gm` return `(its output, *nodes)`."""
    output = gm.graph.output_node()
    output.args = ((output.args[0], *nodes),)
    gm.graph.lint()
    gm.recompile()


def _cut_before(gm: fx.GraphModule, stream: fx.Node) -> None:
    """Replace `stream` by a new last input and drop the nodes that only computed it."""
    last = list(gm.graph.find_nodes(op="placeholder"))[-1]
    with gm.graph.inserting_after(last):
        given = gm.graph.placeholder("site_stream")
    given.meta = dict(stream.meta)
    stream.replace_all_uses_with(given)
    gm.graph.eliminate_dead_code(is_impure_node=lambda node: node.op in ("placeholder", "output"))
    gm.graph.lint()
    gm.recompile()


def build_search_graph(space: ir.Space, loaded: LoadedModel) -> SearchGraph:
    """Trace, bind, score and relax (module docstring) on `loaded`'s example inputs (the shape
    the search runs at); raises `DeosCompileError` / `SpaceError`."""
    bound = bind_model(space, loaded, TRACERS)
    if not bound.block_map.stacks:
        raise DeosCompileError("the model has no block stack to search over")
    if not bound.sites:
        raise DeosCompileError(f"space `{space.name}` has no site to search", "add a `site` to the space")
    relax(bound)
    block_map, sites = bound.block_map, bound.sites
    out_spec = _flat_io(block_map.traced)
    last = _last_block(block_map)
    _expose(block_map.graph_module, _stream_after(last.exit), sites[0].node)
    dense_map = build_block_map(trace(loaded.model, loaded.args, loaded.kwargs, tracers=TRACERS), loaded.roles, loaded.spans)
    _flat_io(dense_map.traced)
    _expose(dense_map.graph_module, _last_block(dense_map).exit)
    first = next(block for block in dense_map.blocks() if block.path == sites[0].block.path)
    stream = site_stream(first, sites[0].position)
    assert stream is not None, "the same model binds the same position"
    _cut_before(dense_map.graph_module, stream)
    flow = TokenFlow.of(block_map, sites, bound.scores)
    length = int(last.exit.meta["val"].shape[1])
    span = block_map.spans.get(last.role or "") or (0, 0)
    protected = torch.tensor([not span[0] <= i < span[1] for i in range(length)])
    if not protected.any():
        protected = torch.ones(length, dtype=torch.bool)
    return SearchGraph(bound, loaded, flow, dense_map.graph_module, protected, out_spec)


@contextmanager
def installed(graph: SearchGraph, modules: dict[str, SiteModule], root: nn.Module | None = None) -> Iterator[None]:
    """Run the relaxed graph (or `root`, a split of it whose parts hold the site modules) with
    `modules` in place of its own site modules, then restore them."""
    holders = {name: next(holder for holder in (root or graph.gm).modules() if graph.submodule(name) in holder._modules)
               for name in modules}
    previous = {name: getattr(holders[name], graph.submodule(name)) for name in modules}
    try:
        for name, module in modules.items():
            setattr(holders[name], graph.submodule(name), module)
        yield
    finally:
        for name, module in previous.items():
            setattr(holders[name], graph.submodule(name), module)


@contextmanager
def sites_off(modules: dict[str, SiteModule]) -> Iterator[None]:
    """Every site's gate sample at 0 (each passes its stream through unchanged, no key bias),
    then the samples as they were."""
    previous = {name: module.gate_sample for name, module in modules.items()}
    try:
        for module in modules.values():
            module.gate_sample = torch.zeros((), device=module.alpha.device)
        yield
    finally:
        for name, sample in previous.items():
            modules[name].gate_sample = sample


START_KEEP_ALL = 0.99  # where a warm start puts a learned keep it does not name (inside the range, not saturated)


def start_keeps(modules: dict[str, SiteModule], start: dict[str, float]) -> None:
    """Warm start: set each learned keep ratio named in `start` (a site's bound name or its short
    name, `P` / `D2` / `V1`: `short_site`) to that ratio of its entering tokens, and every other
    learned keep to `START_KEEP_ALL`, each clamped into its range: the relaxed schedule starts at
    the fixed schedule `start` describes (a site not named keeps everything). Gates and regimes
    keep their inits. An empty `start` changes nothing. `SearchError` for a name that is no site
    with a learned keep, or a ratio outside (0, 1]."""
    if not start:
        return
    learned = {name: module for name, module in modules.items() if module.specs[KEEP].learned}
    names = {alias: name for name in learned for alias in (name, short_site(name))}
    for key, ratio in start.items():
        if key not in names:
            raise SearchError(f"the start names `{key}`, which is no site with a learned keep in this space",
                              f"name one of {', '.join(sorted({short_site(name) for name in learned}))}")
        if not 0.0 < ratio <= 1.0:
            raise SearchError(f"the start keeps {ratio:g} of the tokens entering `{key}`", "give a ratio in (0, 1]")
    chosen = {names[key]: ratio for key, ratio in start.items()}
    for name, module in learned.items():
        spec = module.specs[KEEP]
        ratio = min(max(chosen.get(name, START_KEEP_ALL), spec.lo), spec.hi)
        with torch.no_grad():
            module.beta.fill_(replace(spec, init=ratio).raw())
