"""The attach_cost pass: torch.fx PassBase shape, never changes the graph, a formula on every call
node, aggregation per block, per site and `outside`, its refusals."""

from __future__ import annotations

import pytest
import torch

from cost_cases import bundled, loaded
from deos_dsl.compiler import build_block_map, trace
from deos_dsl.compiler.sites import META_SCORE
from deos_dsl.compiler.trace import SYMBOLIC
from deos_dsl.passes.attach_cost import META_COST, OUTSIDE, AttachCost, attach_cost
from deos_dsl.passes.bind_sites import bind_sites
from deos_dsl.passes.insert_scores import insert_scores


@pytest.mark.parametrize("name", ["embedded", "hf:Qwen2Model"])
def test_graph_unchanged_and_every_call_node_costed(name: str):
    model = loaded(name)
    tracer = SYMBOLIC if name == "embedded" else "torch.export"
    block_map = build_block_map(trace(model.model, model.args, model.kwargs, tracers=(tracer,)), model.roles, model.spans)
    space = bundled("sparsevlm.deos", "sparsevlm_prune")
    sites = bind_sites(space, block_map)
    scores = insert_scores(space, block_map, sites)
    gm = block_map.graph_module
    before, code = block_map.traced.run(), gm.code
    cost = attach_cost(block_map, sites, scores)
    after = block_map.traced.run()
    assert gm.code == code
    for x, y in zip(torch.utils._pytree.tree_leaves(before), torch.utils._pytree.tree_leaves(after)):
        assert torch.equal(x, y)
    calls = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    assert all(META_COST in n.meta for n in calls)
    assert [g.name for g in cost.groups] == [b.path for b in block_map.blocks()] + [OUTSIDE]
    assert [s.name for s in cost.sites] == [s.name for s in sites]
    for site in cost.sites:  # each site's score nodes are its overhead, not its block's
        tagged = [n for n in calls if n.meta.get(META_SCORE) == site.name]
        assert tagged and sum(site.score.values()) == sum(e for n in tagged for e in n.meta[META_COST].values())
    # chained sites: each reduces what the one before it left
    for before_site, site in zip(cost.sites, cost.sites[1:]):
        assert site.entering == before_site.symbol and site.tokens_in == before_site.tokens_out


def test_refusals():
    model = loaded("hf:Qwen2Model")
    one = build_block_map(trace(model.model, model.args, model.kwargs), model.roles, model.spans)
    other = build_block_map(trace(model.model, model.args, model.kwargs), model.roles, model.spans)
    with pytest.raises(ValueError, match="another graph"):
        AttachCost(one)(other.graph_module)
    space = bundled("fastv.deos", "fastv")
    sites = bind_sites(space, one)
    with pytest.raises(ValueError, match="no scores for site"):
        attach_cost(one, sites, {})
