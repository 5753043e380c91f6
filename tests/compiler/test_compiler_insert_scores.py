"""Pass 2 (insert_scores): one recomputed query row per attention score, read from the post-RoPE
q/k of the block's attention with its mask; stream scores on the block output; the graph's
output is unchanged (nothing reads the new nodes yet)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import fx

from compiler_models import loaded, tensors
from deos_dsl.compiler.graph_edit import sdpa_argument
from deos_dsl.compiler.sites import META_SDPA
from deos_dsl.errors import DeosCompileError
from deos_dsl.passes.bind_sites import bind_sites
from deos_dsl.passes.insert_scores import InsertScores
from relaxed_cases import DECODER, EAGER_LAST, fresh_block_map, space_from


def node_values(gm: fx.GraphModule, name: str) -> dict[fx.Node, object]:
    """Every node's value on the model's example inputs."""
    model = loaded(name)
    interpreter = fx.Interpreter(gm, garbage_collect_values=False)
    placeholders = gm.graph.find_nodes(op="placeholder")
    interpreter.run(*(model.args or [model.kwargs.get(n.target) for n in placeholders]))
    return interpreter.env


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory):
    block_map = fresh_block_map("hf:Qwen2Model")
    reference = tensors(block_map.traced.run())
    space = space_from(DECODER, tmp_path_factory.mktemp("space"))
    sites = bind_sites(space, block_map)
    inserted = InsertScores(space, block_map, sites)
    result = inserted(block_map.graph_module)
    return block_map, inserted, reference, result


def test_output_unchanged_and_nodes_shaped(qwen):
    block_map, inserted, reference, result = qwen
    assert result.modified
    for a, b in zip(tensors(block_map.traced.run()), reference):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    for site in inserted.sites:
        scores = inserted.scores[site.name]
        assert tuple(scores.score.meta["val"].shape) == (2, 24) and scores.span == (2, 18)
        assert tuple(scores.features.meta["val"].shape) == (2, 24, 8)  # head-mean keys
        assert scores.score.meta["nn_module_stack"] == scores.score.meta[META_SDPA].meta["nn_module_stack"]


def test_attention_scores_equal_an_independent_softmax_row(qwen):
    block_map, inserted, _, _ = qwen
    env = node_values(block_map.graph_module, "hf:Qwen2Model")
    for site, query_rows in zip(inserted.sites, ([23], list(range(18, 24)))):
        score = inserted.scores[site.name].score
        sdpa = score.meta[META_SDPA]
        q, k = env[sdpa_argument(sdpa, "query")], env[sdpa_argument(sdpa, "key")]
        mask = env[sdpa_argument(sdpa, "attn_mask")]  # bool [B, 1, N, N], causal
        row = q[:, :, query_rows].mean(dim=2, keepdim=True)  # one (mean) query row
        logits = (row @ k.transpose(-1, -2)) * sdpa_argument(sdpa, "scale")
        logits = logits.masked_fill(~mask[:, :, query_rows[-1:], :], float("-inf"))
        want = torch.softmax(logits, dim=-1).mean(dim=(1, 2))
        torch.testing.assert_close(env[score], want, atol=1e-6, rtol=0)
        assert torch.allclose(env[score].sum(dim=-1), torch.ones(2))


def test_refuses_a_graph_with_scores(qwen):
    block_map, inserted, _, _ = qwen
    with pytest.raises(ValueError, match="already has site scores"):
        InsertScores(inserted.space, block_map, inserted.sites)(block_map.graph_module)


def test_norm_and_similarity_scores_on_the_stream(tmp_path: Path):
    text = DECODER.replace("score: attention(query: last)", "score: norm").replace(
        "score: attention(query: text)", "score: similarity(to: text)")
    block_map = fresh_block_map("embedded", "torch.fx.symbolic_trace")
    space = space_from(text, tmp_path)
    sites = bind_sites(space, block_map)
    inserted = InsertScores(space, block_map, sites)
    inserted(block_map.graph_module)
    env = node_values(block_map.graph_module, "embedded")
    first, second = (inserted.scores[s.name].score for s in sites)
    x0, x1 = env[sites[0].node], env[sites[1].node]
    torch.testing.assert_close(env[first], x0.norm(dim=-1))
    text_mean = torch.nn.functional.normalize(x1[:, 144:].mean(dim=1), dim=-1)
    torch.testing.assert_close(env[second], (torch.nn.functional.normalize(x1, dim=-1) * text_mean[:, None]).sum(-1))


@pytest.mark.parametrize("query", ["last", "raters"])
def test_eager_attention_scores_equal_the_fused_ones(tmp_path: Path, query: str):
    """A block computing attention as matmul + softmax (`attn_implementation="eager"`; Gemma2's
    soft-capping has no other) gets its scores from the rows of the probabilities it computed:
    the same as the rows recomputed from the fused kernel's q and k (SparseVLM's raters: every
    row's own attention)."""
    space = space_from(EAGER_LAST.replace("attention(query: last)", f"attention(query: {query})"), tmp_path)
    scores = {}
    for name in ("hf:Qwen2Model", "module:compiler_models:eager_qwen2"):
        block_map = fresh_block_map(name)
        inserted = InsertScores(space, block_map, bind_sites(space, block_map))
        inserted(block_map.graph_module)
        env = node_values(block_map.graph_module, "hf:Qwen2Model")
        scores[name] = [env[inserted.scores[site.name].score] for site in inserted.sites]
    for fused, eager in zip(*scores.values()):
        torch.testing.assert_close(eager, fused, atol=1e-6, rtol=0)


def test_eager_attention_refuses_key_affinity_by_name(tmp_path: Path):
    block_map = fresh_block_map("module:compiler_models:eager_qwen2")
    space = space_from(DECODER, tmp_path)
    with pytest.raises(DeosCompileError) as caught:
        InsertScores(space, block_map, bind_sites(space, block_map))(block_map.graph_module)
    assert "`affinity: keys` reads the keys of scaled_dot_product_attention" in caught.value.message
    assert "computes its attention eagerly (matmul + softmax)" in caught.value.message
    assert caught.value.hint.endswith("or write `affinity: hidden`")
