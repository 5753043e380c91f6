"""Site positions inside a block (`at: before | mid | after`, `deos_dsl.compiler.positions`):

- structure: `before` binds the stream entering the block, `mid` the node between its attention and
  its MLP that every path from the block's entry to its exit passes through (checked here by
  removing it: the exit is then unreachable), `after` the exit; a block without such a point
  (no attention; attention and MLP side by side) is a positioned diagnostic;
- the light attention pass of a `before` site: copies outside the block, and its score equals the
  block's own attention score computed on the same stream (a site `after` the block reads that);
- invariant: at the identity point (gates closed; gates open keeping everything) the relaxed graph
  with `mid` and `before` sites equals the model's output, and an open gate changes it;
- the budget: a `before` site changes its own layer's tokens (`tokens.mean` counts it one layer
  earlier than a site `after` the same layer), a `mid` site the layers after it.
The emitted graphs of each position against hand-written references are in
test_compiler_conformance.py (ToMe and EViT `mid`, PyramidDrop `before`); their FLOPs against an
independent counter in tests/cost/test_cost_emitted.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from compiler_models import Layers, tensors
from deos_dsl.compiler import LoadedModel, build_block_map, trace
from deos_dsl.compiler.positions import META_LIGHT, attention_node
from deos_dsl.compiler.trace import SYMBOLIC, placeholder_values
from deos_dsl.errors import SpaceError
from deos_dsl.frontend import loads
from deos_dsl.passes.bind_sites import bind_sites
from deos_dsl.pipeline import bind
from deos_dsl.search.constraints import TokenFlow
from relaxed_cases import Relaxed, fresh_block_map, relax, space_from

QWEN, CLIP = "hf:Qwen2Model", "hf:CLIPVisionModel"
SITE = "site {selector} {{ at: {at}\n activate: on\n retain: 50%\n score: {score}\n operator: prune }}\n"


def space_text(*sites: tuple[str, str, str]) -> str:
    body = "".join(SITE.format(selector=selector, at=at, score=score) for selector, at, score in sites)
    return f"space s {{\n tokens {{ reducible: visual\n protected: cls }}\n{body}}}\n"


def block_flow(block) -> nx.DiGraph:
    """The dataflow inside `block`, from its entry."""
    members = set(block.nodes)
    graph = nx.DiGraph()
    graph.add_edges_from((arg, node) for node in block.nodes for arg in node.all_input_nodes
                         if arg in members or arg is block.entry)
    return graph


@pytest.mark.parametrize(("model", "stack"), [("embedded", "vision"), ("embedded", "decoder"), (CLIP, "vision"),
                                              (QWEN, "decoder")])
def test_each_position_binds_its_stream_node(model: str, stack: str):
    block_map = fresh_block_map(model)
    text = space_text(*((f"{stack}.layers[1]", at, "norm") for at in ("before", "mid", "after")))
    before, mid, after = bind_sites(loads(text)[0], block_map)
    block = before.block
    assert (before.position, mid.position, after.position) == ("before", "mid", "after")
    assert before.node is block.entry and after.node is block.exit
    # mid: a stream-shaped node of the block after its attention, through which every path from
    # the block's entry to its exit passes
    nodes, shape = block.nodes, block.entry.meta["val"].shape
    attention = nodes.index(attention_node(block))
    assert mid.node in nodes and nodes.index(mid.node) > attention and mid.node.meta["val"].shape == shape

    def cuts(node: fx.Node) -> bool:
        flow = block_flow(block)
        flow.remove_node(node)
        return not nx.has_path(flow, block.entry, block.exit)

    assert nx.has_path(block_flow(block), block.entry, block.exit) and cuts(mid.node)
    # the first such node: no earlier stream-shaped node after the attention cuts the block
    between = nodes[attention + 1:nodes.index(mid.node)]
    assert not any(cuts(node) for node in between if getattr(node.meta.get("val"), "shape", None) == shape)


class Parallel(nn.Module):
    """A block whose attention and MLP read the same input side by side (GPT-J style)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.mlp = nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return x + F.scaled_dot_product_attention(q, k, v) + self.mlp(x)


def test_a_block_without_a_mid_point_is_a_positioned_diagnostic():
    model = LoadedModel("parallel", Layers([Parallel(), Parallel()]), (torch.randn(2, 6, 8),),
                        spans={"decoder": (0, 6)})
    block_map = build_block_map(trace(model.model, model.args, tracers=(SYMBOLIC,)), model.roles, model.spans)
    with pytest.raises(SpaceError) as caught:
        bind_sites(loads(space_text(("decoder.layers[0]", "mid", "norm")), "p.deos")[0], block_map)
    (diagnostic,) = caught.value.diagnostics
    assert (diagnostic.file, diagnostic.line) == ("p.deos", 4)  # the site block
    assert "block `layers.0` has no point between its attention and its MLP" in diagnostic.message
    assert "`at: after`" in diagnostic.hint
    # the embedded projector has no attention at all
    with pytest.raises(SpaceError, match="block `projector` has no point between its attention"):
        bind_sites(loads(space_text(("projector", "mid", "norm")))[0], fresh_block_map("embedded"))


def node_values(gm: fx.GraphModule, args: list, wanted: list[fx.Node]) -> list[Tensor]:
    """The values of `wanted` nodes in one run of `gm` on its flat inputs `args`."""
    seen: dict[fx.Node, Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> object:
            value = super().run_node(node)
            if node in wanted:
                seen[node] = value
            return value

    Recorder(gm).run(*args)
    return [seen[node] for node in wanted]


@pytest.mark.parametrize(("model", "selector", "query"), [("embedded", "decoder.layers[2]", "last"),
                                                          (QWEN, "decoder.layers[1]", "last"),
                                                          (QWEN, "decoder.layers[2]", "text"),
                                                          (CLIP, "vision.layers[1]", "cls")])
def test_the_light_pass_scores_as_the_block_itself_attends(model: str, selector: str, query: str):
    """With nothing reduced before it, the light pass of a site `before` block b recomputes b's
    own attention on b's input: its score equals that of a site `after` b (b's attention node)."""
    block_map = fresh_block_map(model)
    score = f"attention(query: {query})"
    space = loads(space_text((selector, "before", score), (selector, "after", score)))[0]
    bound = bind(space, block_map)
    before, after = bound.sites
    light = [node for node in block_map.graph_module.graph.nodes if META_LIGHT in node.meta]
    assert light and all(node not in before.block.nodes and "nn_module_stack" not in node.meta for node in light)
    assert all(node.meta[META_LIGHT] == (before.name, before.block.path) for node in light)
    assert bound.scores[before.name].score in light and bound.scores[after.name].score not in light
    traced = block_map.traced
    args = placeholder_values(block_map.graph_module, traced.root, traced.args, traced.kwargs)
    got, want = node_values(block_map.graph_module, args, [bound.scores[s.name].score for s in (before, after)])
    assert got.shape == want.shape and got.ndim == 2
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


LEARNED = """space learned {{
  tokens {{ reducible: visual
    protected: cls, text, system }}
  defaults {{
    activate: learned init 0.5
    retain: learned [25%, 100%] init 60%
    score: attention(query: {query})
    operator: unified {{
      gamma: learned [0, 1] init 0.5
      tau: learned log [0.01, 10] init 0.1
      nu: learned [0, 1] init 0.9
    }}
  }}
  site {stack}.layers[0] {{ at: before }}
  site {stack}.layers[1] {{ at: mid }}
  site {stack}.layers[1] {{ at: before }}
}}
"""


@pytest.fixture(scope="module", params=[("embedded", "decoder", "last"), (QWEN, "decoder", "last"),
                                        (CLIP, "vision", "cls")], ids=["embedded", "qwen2", "clip"])
def relaxed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Relaxed:
    model, stack, query = request.param
    return relax(model, space_from(LEARNED.format(query=query, stack=stack), tmp_path_factory.mktemp("space")))


def run_close(relaxed: Relaxed) -> None:
    got = tensors(relaxed.block_map.traced.run())
    for a, b in zip(got, relaxed.reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_relaxed_positions_are_the_identity_where_they_should_be(relaxed: Relaxed):
    assert [site.position for site in relaxed.sites] == ["before", "before", "mid"]  # graph order
    state = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in relaxed.modules.items()}
    try:
        for module in relaxed.modules.values():
            module.alpha.data.fill_(-math.inf)  # gates closed
        run_close(relaxed)
        for module in relaxed.modules.values():
            module.alpha.data.fill_(math.inf)  # gates open, keeping everything, transferring nothing
            module.beta.data.fill_(40.0)
            module.gamma.data.fill_(-40.0)
            module.temperature.fill_(0.0)
        run_close(relaxed)
        for name, module in relaxed.modules.items():
            module.load_state_dict(state[name])
            module.alpha.data.fill_(math.inf)  # gates open at the initial keep ratio: the output changes
        got = tensors(relaxed.block_map.traced.run())
        assert any((a - b).abs().max() > 1e-4 for a, b in zip(got, relaxed.reference))
    finally:
        for name, module in relaxed.modules.items():
            module.load_state_dict(state[name])


def test_gradients_reach_the_sites_through_the_light_pass(relaxed: Relaxed):
    relaxed.gm.zero_grad(set_to_none=True)
    for module in relaxed.modules.values():
        module.alpha.data.fill_(3.0)
    try:
        loss = sum(t.float().square().mean() for t in tensors(relaxed.block_map.traced.run()) if t.is_floating_point())
        loss.backward()
        for module in relaxed.modules.values():
            assert module.beta.grad is not None and module.beta.grad.abs() > 0
    finally:
        for module in relaxed.modules.values():
            module.alpha.data.fill_(0.0)


def test_before_counts_its_own_layer_in_the_budget():
    """`tokens.mean` over a 4-layer decoder with one site halving the 144 visual tokens at layer 2:
    `after` (or `mid`) halves layer 3 only, `before` halves layers 2 and 3."""
    shares = {}
    for at in ("before", "mid", "after"):
        block_map = fresh_block_map("embedded")
        bound = bind(loads(space_text(("decoder.layers[2]", at, "norm")))[0], block_map)
        flow = TokenFlow.of(block_map, bound.sites, bound.scores)
        shares[at] = flow.mean_share(flow.through(lambda site, entering: entering // 2))
    assert shares == {"before": pytest.approx((1 + 1 + 0.5 + 0.5) / 4), "mid": pytest.approx((1 + 1 + 1 + 0.5) / 4),
                      "after": pytest.approx((1 + 1 + 1 + 0.5) / 4)}


def test_the_language_reports_a_bad_position(tmp_path: Path):
    with pytest.raises(SpaceError) as caught:
        space_from("space s { site decoder.layers[1] { at: inside\n retain: 50%\n score: norm\n operator: prune } }\n",
                   tmp_path)
    (diagnostic,) = caught.value.diagnostics
    assert "unexpected name `inside`; expected one of `after`, `before`, `mid`" in diagnostic.message
