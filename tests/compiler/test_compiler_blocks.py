"""Block map: stacks, roles, residual stream, reducible spans and side tensors per model."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from compiler_models import CASES, block_map, traced
from deos_dsl.compiler import BlockMapError, build_block_map, trace

# name -> ({stack prefix: (role, blocks)}, projector path, {role: span}, {role: sorted side kinds})
EXPECTED = {
    "embedded": ({"vision.layers": ("vision", 4), "decoder.layers": ("decoder", 4)}, "projector",
                 {"vision": (1, 145), "decoder": (0, 144), "projector": (0, 144)}, {"vision": [], "decoder": []}),
    "hf:CLIPVisionModel": ({"encoder.layers": ("vision", 2)}, None, {"vision": (1, 65)}, {"vision": []}),
    "hf:SiglipVisionModel": ({"encoder.layers": ("vision", 2)}, None, {"vision": (0, 64)}, {"vision": []}),
    # transformers 5 ViT builds an explicit all-true bidirectional mask [B, 1, N, N]
    "hf:ViTModel": ({"layers": ("vision", 2)}, None, {"vision": (1, 65)}, {"vision": ["mask"]}),
    "hf:LlavaForConditionalGeneration": (
        {"model.vision_tower.encoder.layers": ("vision", 3), "model.language_model.layers": ("decoder", 3)},
        "model.multi_modal_projector", {"vision": (1, 17), "decoder": (2, 18), "projector": (0, 16)},
        {"vision": [], "decoder": ["mask", "positional", "positional"]}),
    "hf:Qwen2Model": ({"layers": ("decoder", 3)}, None, {"decoder": (2, 18)},
                      {"decoder": ["mask", "positional", "positional"]}),
}


@pytest.mark.parametrize(("name", "tracer"), CASES)
def test_block_map_matches_the_architecture(name: str, tracer: str):
    stacks, projector, spans, sides = EXPECTED[name]
    result = block_map(name, tracer)
    assert {s.prefix: (s.role, len(s.blocks)) for s in result.stacks} == stacks
    assert (result.projector.path if result.projector else None) == projector
    assert {role: span for role, span in result.spans.items() if span} == spans
    for stack in result.stacks:
        assert [b.index for b in stack.blocks] == list(range(len(stack.blocks)))
        assert all(b.path == f"{stack.prefix}.{b.index}" and b.role == stack.role for b in stack.blocks)
        for block in stack.blocks:
            assert sorted(s.kind for s in block.side) == sides[stack.role]


@pytest.mark.parametrize(("name", "tracer"), CASES)
def test_stream_is_b_n_d_and_chains_block_to_block(name: str, tracer: str):
    result = block_map(name, tracer)
    batch = 2
    for stack in result.stacks:
        for previous, block in zip([None, *stack.blocks], stack.blocks):
            entry, exit_ = block.entry.meta["val"], block.exit.meta["val"]
            assert entry.ndim == 3 and entry.shape == exit_.shape and entry.shape[0] == batch
            assert block.entry not in block.nodes and block.exit in block.nodes
            assert any(user not in block.nodes for user in block.exit.users)
            if previous is not None:
                assert block.entry is previous.exit


def test_node_lookup_follows_nn_module_stack():
    result = block_map("embedded")
    for block in result.blocks():
        assert all(result.block_of(node) is block for node in block.nodes)
        assert result.block_of(block.entry) is not block
    linears = [n for n in result.graph_module.graph.nodes if n.target == torch.ops.aten.linear.default]
    owners = [result.block_of(n).path if result.block_of(n) else None for n in linears]
    assert owners.count("decoder.layers.3") == 4 and owners.count("projector") == 2 and owners[-1] is None  # head


@pytest.mark.parametrize(("name", "graph_input"), [("hf:Qwen2Model", "inputs_embeds"),
                                                   ("hf:LlavaForConditionalGeneration", "input_ids")])
def test_decoder_blocks_read_the_sequence_length_from_the_graph_input(name: str, graph_input: str):
    """The KNOWN TRAP on real graphs: every decoder block's reshapes read sym_size(input, 1)."""
    result = block_map(name)
    symbol = traced(name).dynamic_dims[graph_input][1]
    decoder = result.stack("decoder")
    assert decoder.blocks[0].shape[1] == symbol
    for block in decoder.blocks:
        (read,) = block.length_reads
        assert read.target == torch.ops.aten.sym_size.int and read.args[1] == 1
        assert read.args[0].op == "placeholder" and read.args[0].target == graph_input
        assert str(read.meta["val"]) == symbol
        assert any(read in user.all_input_nodes for user in read.users if user in block.nodes)


def test_role_override_and_unknown_override():
    result = traced("hf:LlavaForConditionalGeneration")
    swapped = build_block_map(result, roles={"vision": "model.language_model", "decoder": "model.vision_tower"})
    assert {s.prefix.split(".")[1]: s.role for s in swapped.stacks} == {"vision_tower": "decoder", "language_model": "vision"}
    with pytest.raises(BlockMapError, match="matches no block stack") as caught:
        build_block_map(result, roles={"decoder": "model.language_modle"})
    assert caught.value.hint == "did you mean `model.language_model.layers`?"


def test_model_without_blocks_is_a_clear_error():
    with pytest.raises(BlockMapError, match="no transformer blocks found"):
        build_block_map(trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), (torch.randn(2, 3, 4),)))


def test_graph_module_without_root_uses_repeated_siblings():
    gm = fx.symbolic_trace(block_map("embedded").traced.root)
    result = build_block_map(trace(gm, traced("embedded").args))
    assert [(s.prefix, s.role, len(s.blocks)) for s in result.stacks] == [
        ("vision.layers", "vision", 4), ("decoder.layers", "decoder", 4)]
    assert result.spans["vision"] == (1, 145) and result.spans.get("decoder") is None  # no model attribute
