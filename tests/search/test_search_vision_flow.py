"""The vision chain feeds the decoder's on a 1:1 projector: ToMe / EViT / VisionZip spaces count
in tokens.mean, equal to the share the emitted graph really passes to the decoder (the last
vision site's tokens minus CLS, over the 144 visual tokens of the embedded model), a projector
site composes with a vision site, the expected (tensor) flow carries it differentiably, and a
chain without a feeder still starts at its span."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deos_dsl.compiler.graph_edit import sdpa_argument, sdpa_nodes
from deos_dsl.compiler.masking import key_mask
from deos_dsl.compiler.models import resolve_model
from deos_dsl.embedded.vqa import fixed_eval_batch
from deos_dsl.frontend import ir, load_spaces
from deos_dsl.pipeline import bind_model, compile_emitted
from deos_dsl.search.constraints import FlowSite, TokenFlow, discrete_leaving, expected_leaving
from deos_dsl.search.discretise import allowed_keeps, site_retains
from deos_dsl.search.graph import TRACERS, build_search_graph, installed
from deos_dsl.search.validate import discrete_modules

SPACES = Path(__file__).resolve().parents[2] / "spaces"
VISUAL, CLS = 144, 1  # the embedded model's reducible visual tokens; the vision tower's CLS
PROJECTOR_HALF = ir.Site(selectors=[ir.RoleSelector(path=["projector"])], activate=ir.ActivateFixed(on=True),
                         retain=ir.RetainFixed(amount=ir.Num(value=50.0, unit="%")), score=ir.Score(kind="norm"),
                         operator=ir.Operator(form="prune"))


def bundled(name: str) -> ir.Space:
    (space,) = load_spaces(SPACES / f"{name}.deos")
    return space


def discrete_flow(space: ir.Space) -> tuple[TokenFlow, dict[str, tuple[int, int]]]:
    """The token flow of a fixed `space` on the embedded model and its discrete counts (passes
    1-2 only: EViT's fused token has no relaxed graph)."""
    loaded = resolve_model("embedded")
    bound = bind_model(space, loaded, TRACERS)
    block_map, sites, scores, modules = bound.block_map, bound.sites, bound.scores, bound.modules
    retains = site_retains(space, sites)

    def leave(site: FlowSite, entering: int) -> int:
        (keep,) = allowed_keeps(retains[site.name], entering, modules[site.name].bipartite)
        return discrete_leaving(modules[site.name], entering, keep, True)

    flow = TokenFlow.of(block_map, sites, scores)
    return flow, flow.through(leave)


def vision_sites(lengths: dict[str, tuple[int, int]]) -> list[str]:
    """The emitted vision sites, in layer order."""
    return sorted((name for name in lengths if name.startswith("vision.")), key=lambda name: int(name.split(".")[2].split("@")[0]))


@pytest.mark.parametrize("name", ["tome", "evit", "visionzip"])
def test_a_vision_space_counts_what_the_emitted_decoder_receives(name: str) -> None:
    space = bundled(name)
    flow, counts = discrete_flow(space)
    lengths = compile_emitted(space, resolve_model("embedded")).lengths
    reaching_decoder = lengths[vision_sites(lengths)[-1]][1] - CLS
    assert reaching_decoder < VISUAL
    assert flow.mean_share(counts) == pytest.approx(reaching_decoder / VISUAL, abs=1e-12)


def test_a_projector_site_after_a_vision_site_composes() -> None:
    visionzip = bundled("visionzip")
    space = visionzip.model_copy(update={"sites": [*visionzip.sites, PROJECTOR_HALF]})
    flow, counts = discrete_flow(space)
    lengths = compile_emitted(space, resolve_model("embedded")).lengths
    (vision,), (projector,) = vision_sites(lengths), [name for name in lengths if name.startswith("projector")]
    assert counts[projector] == (lengths[vision][1] - CLS, lengths[projector][1]) == (24, 12)
    assert flow.mean_share(counts) == pytest.approx(lengths[projector][1] / VISUAL, abs=1e-12)


def test_the_expected_flow_carries_the_vision_chain_differentiably() -> None:
    graph = build_search_graph(bundled("tome"), resolve_model("embedded"))
    gates = {name: torch.tensor(1.0, requires_grad=True) for name in graph.modules}

    def leave(site: FlowSite, entering: torch.Tensor | int) -> torch.Tensor:
        return expected_leaving(graph.modules[site.name], torch.as_tensor(entering, dtype=torch.float32), gates[site.name])

    mean = graph.flow.mean_share(graph.flow.through(leave))
    assert isinstance(mean, torch.Tensor) and float(mean.detach()) == pytest.approx((VISUAL - 4 * 16) / VISUAL)
    mean.backward()
    assert all(float(gate.grad) < 0 for gate in gates.values())  # opening any vision gate lowers tokens.mean


def halve(site: FlowSite, entering: int) -> int:
    return entering // 2


def test_a_chain_without_a_feeder_starts_at_its_span() -> None:
    sites = [FlowSite("vision.layers.3@0", "vision.layers", 3, VISUAL), FlowSite("decoder.layers.1@1", "decoder.layers", 1, VISUAL)]
    fed = TokenFlow(sites, "decoder.layers", 4, VISUAL, {"decoder.layers": "vision.layers"})
    alone = TokenFlow(sites, "decoder.layers", 4, VISUAL)
    assert fed.through(halve)["decoder.layers.1@1"] == (72, 36)
    assert alone.through(halve)["decoder.layers.1@1"] == (144, 72)
    assert fed.mean_share(fed.through(halve)) == pytest.approx((72 + 72 + 36 + 36) / (4 * VISUAL))
    assert alone.mean_share(alone.through(halve)) == pytest.approx((144 + 144 + 72 + 72) / (4 * VISUAL))


VISION_THEN = """import "{common}"

space carried extends baseline {{
  site vision.layers[1] {{ activate: on  retain: 50%  score: norm  operator: {vision} }}
{after}}}
"""
RECEIVERS = {
    "decoder": "  site decoder.layers[0] { activate: on  retain: 50%  score: attention(query: text)  operator: prune }\n",
    "projector": "  site projector { activate: on  retain: 50%  score: norm  operator: prune }\n",
    "none": "",
}


@pytest.mark.parametrize(("vision", "receiver"), [("prune", "decoder"), ("prune", "projector"), ("merge", "projector"),
                                                  ("prune", "none")])
def test_the_relaxed_graph_carries_a_vision_reduction_as_the_emitted_graph_drops_it(tmp_path: Path, vision: str,
                                                                                    receiver: str) -> None:
    """A vision site's hard mask crosses the 1:1 projector: into a projector site (which keeps
    none of the removed tokens), a decoder site, or the decoder's attention alone. The relaxed
    graph with the discrete modules (what validation runs) gives the logits of the emitted
    graph, which really removes the tokens; without the carry they differed by 7-8 logits."""
    path = tmp_path / "carried.deos"
    path.write_text(VISION_THEN.format(common=SPACES / "common.deos", vision=vision, after=RECEIVERS[receiver]))
    (space,) = load_spaces(path)
    loaded = resolve_model("embedded")
    graph = build_search_graph(space, loaded)
    decoder = graph.block_map.stack("decoder")
    assert decoder is not None and graph.block_map.vision_feeds_decoder
    for block in decoder.blocks:  # the vision site's bias reaches every decoder layer's attention
        assert all(getattr(sdpa_argument(s, "attn_mask"), "target", None) is key_mask for s in sdpa_nodes(block.nodes))
    settings = {site.name: space.sites[site.site_index] for site in graph.sites}
    batch = fixed_eval_batch("val", 8)
    with torch.no_grad(), installed(graph, discrete_modules(graph, settings, torch.device("cpu"))):
        relaxed = graph.gm(batch.pixels, batch.question)[0]
    hard = compile_emitted(space, loaded).graph_module(batch.pixels, batch.question)
    torch.testing.assert_close(relaxed, hard, atol=1e-4, rtol=1e-4)
