"""The reduced cost of a schedule, evaluated from the symbolic formula of the DENSE graph, equals
FlopCounterMode on the EMITTED graph of that schedule (tokens really removed), attention
included (math backend); the space's own schedule is the one `deos emit` plans."""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy

from cost_cases import PerNode, bundled, counted, loaded, placeholders
from deos_dsl.cost import SitePoint
from deos_dsl.cost.propagate import graph_costs
from deos_dsl.frontend import ir, load_spaces
from deos_dsl.pipeline import compile_emitted, cost_space

FASTV = """import "{spaces}/common.deos"
space fastv_r extends baseline {{
  site decoder.layers[1] {{
    activate: on
    retain: {keep}%
    score: attention(query: last)
    operator: prune
  }}
}}
"""


def _fastv(tmp_path: Path, keep: int) -> ir.Space:
    path = tmp_path / f"fastv_{keep}.deos"
    path.write_text(FASTV.format(spaces=Path(__file__).resolve().parents[2] / "spaces", keep=keep))
    (space,) = load_spaces(path)
    return space


def _check(space: ir.Space, model: str) -> None:
    cost, schedule = cost_space(space, loaded(model))
    emitted = compile_emitted(space, loaded(model))
    planned = {name: SitePoint(plan.active, plan.leaving) for name, plan in emitted.plans.items()}
    assert schedule == planned
    assert any(point.active and point.leaving < cost.evaluate(site.entering, cost.point(schedule))
               for site, point in zip(cost.sites, schedule.values()))
    theirs = counted(emitted.run, math=True)
    assert cost.flops(schedule) == theirs
    assert cost.flops(schedule) < cost.dense_flops()


@pytest.mark.parametrize("keep", [75, 50, 25])
def test_fastv_on_qwen2_at_three_keep_ratios(tmp_path: Path, keep: int):
    _check(_fastv(tmp_path, keep), "hf:Qwen2Model")


@pytest.mark.parametrize("model,file,name", [
    ("hf:Qwen2Model", "pyramiddrop.deos", "pyramiddrop"),
    ("hf:Qwen2Model", "sparsevlm.deos", "sparsevlm_prune"),
    ("hf:LlavaForConditionalGeneration", "fastv.deos", "fastv"),
    ("embedded", "fastv.deos", "fastv"),
    ("embedded", "sparsevlm.deos", "sparsevlm_prune"),
    ("embedded", "tome.deos", "tome"),  # vision sites whose tokens flow on into the decoder
    ("embedded", "evit.deos", "evit"),  # one fused token on top of the kept ones
    ("embedded", "visionzip.deos", "visionzip"),  # contextual targets
    ("hf:CLIPVisionModel", "tome.deos", "tome"),
    ("hf:LlavaForConditionalGeneration", "tome.deos", "tome"),  # the decoder sees layer -2's tokens
])
def test_bundled_spaces(model: str, file: str, name: str):
    _check(bundled(file, name), model)


@pytest.mark.parametrize("file,name", [("evit.deos", "evit"), ("pool2x2.deos", "pool2x2")])
def test_llava_vision_sites_count_what_the_model_really_runs(file: str, name: str):
    """HF LLaVA feeds its projector from the vision tower's layer -2. Whether the tower's later
    work is dead code (`Cost.dead`, never counted) or live (the release returns the tower's own
    outputs) is the transformers release's choice, so it is MEASURED on the model in hand: the
    dense eager model runs exactly the counted cost plus that dead code, and so does the emitted
    model (it re-traces the tower) at the schedule."""
    space, model = bundled(file, name), "hf:LlavaForConditionalGeneration"
    cost, schedule = cost_space(space, loaded(model))
    dead_code = sympy.Add(*cost.dead.values())
    dense_dead, reduced_dead = (cost.evaluate(dead_code, cost.point(at)) for at in (None, schedule))
    assert min(dense_dead, reduced_dead) >= 0
    dense = loaded(model)
    assert counted(lambda: dense.model(*dense.args, **dense.kwargs), math=True) == cost.dense_flops() + dense_dead
    assert counted(compile_emitted(space, loaded(model)).run, math=True) == cost.flops(schedule) + reduced_dead
    assert cost.flops(schedule) < cost.dense_flops()


def test_emitted_graph_node_by_node():
    """Costing the emitted graph itself (hard sites by their plan) matches FlopCounterMode on
    every node, and its total is the symbolic reduced cost."""
    space = bundled("pyramiddrop.deos", "pyramiddrop")
    emitted = compile_emitted(space, loaded("hf:Qwen2Model"))
    gm = emitted.graph_module
    run = PerNode(gm, math=True)
    run.run(*placeholders(gm, emitted.args, emitted.kwargs))
    costs = graph_costs(gm)
    for node, kinds in costs.items():
        assert sum(int(e) for e in kinds.values()) == run.counts[node], node.name
    cost, schedule = cost_space(space, loaded("hf:Qwen2Model"))
    assert sum(int(e) for kinds in costs.values() for e in kinds.values()) == cost.flops(schedule)
