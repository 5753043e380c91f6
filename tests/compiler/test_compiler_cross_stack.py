"""Discretise across stacks: vision-encoder and projector sites of the WHOLE embedded model (traced
with torch.fx.symbolic_trace) whose reduced tokens flow on through glue (CLS dropped, projector,
learned decoder positions, `cat` with the question) into the decoder (the bundled ToMe, EViT,
VisionZip and 2x2 pooling there equal hand-written eager references in the conformance matrix,
test_compiler_conformance.py). A vision site and a decoder site chain, equal to a hand-written
reference (each surviving visual token at the decoder position of its kept patch, written per
example) to 1e-5; a projector site's sizes cross into the decoder as in the relaxed graph; every
old-length side tensor met downstream is gathered; the same holds on a toy two-stack model;
consumers that cannot be re-bound raise a clear error; `deos emit` writes the artefacts."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from test_compiler_emit import run_cli
from torch import nn

from compiler_models import Residual, loaded, tensors
from deos_dsl.cli import EXIT_OK
from deos_dsl.compiler import BlockMap, LoadedModel, build_block_map, trace
from deos_dsl.compiler.blocks import dataflow
from deos_dsl.compiler.hard_site import SitePlan
from deos_dsl.compiler.masking import gather_mask
from deos_dsl.compiler.token_index import gather_side
from deos_dsl.compiler.trace import SYMBOLIC
from deos_dsl.errors import DeosCompileError
from deos_dsl.ops import gather_tokens
from references import VisualSpan, answer_from_patches, cls_prune, embedded_vision, prune, prune_plan, take
from relaxed_cases import SPACES, bundled, fresh_block_map, relax, space_from
from test_compiler_discretise import emit

OLD_LENGTHS = (145, 144, 156)  # vision stream, projector stream, decoder stream before any site

VISION_THEN_DECODER = """space vision_then_decoder {
  tokens {
    reducible: visual
    protected: cls, text
  }
  site vision.layers[1] {
    activate: on
    retain: 50%
    score: attention(query: cls)
    operator: prune
  }
  site decoder.layers[1] {
    activate: on
    retain: 50%
    score: attention(query: last)
    operator: prune
  }
}
"""

PROJECTOR_THEN_DECODER = """space projector_then_decoder {
  tokens {
    reducible: visual
    protected: text
  }
  site projector {
    activate: on
    retain: 50%
    score: norm
    operator: unified {
      gamma: 0.5
      tau: 0.1
      nu: 1
      proportional: on
    }
  }
  site decoder.layers[1] {
    activate: on
    retain: 50%
    score: attention(query: last)
    operator: unified {
      gamma: 0.5
      tau: 0.2
      nu: 1
      proportional: on
      affinity: keys
    }
  }
}
"""

PRUNE_FIRST = """space prune_first {
  tokens {
    reducible: span(0, 16)
  }
  site decoder.layers[0] {
    activate: on
    retain: 50%
    score: norm
    operator: prune
  }
}
"""


# ---- helpers ------------------------------------------------------------------------------
def decoder_lengths(block_map: BlockMap) -> set[int]:
    """The token counts of every stream-shaped node inside the decoder blocks."""
    return {int(node.meta["val"].shape[1]) for block in block_map.stack("decoder").blocks for node in block.nodes
            if getattr(node.meta.get("val"), "ndim", 0) == 3}


def emitted_tome() -> tuple[BlockMap, dict[str, SitePlan], dict[str, tuple[int, int]]]:
    block_map = fresh_block_map("embedded", SYMBOLIC)
    plans, lengths, _ = emit(block_map, bundled("tome.deos", "tome"))
    return block_map, plans, lengths


# ---- tests --------------------------------------------------------------------------------
def test_vision_site_then_decoder_site_chain(tmp_path: Path):
    block_map = fresh_block_map("embedded", SYMBOLIC)
    plans, lengths, _ = emit(block_map, space_from(VISION_THEN_DECODER, tmp_path))
    # the decoder's visual span is what the vision site left: 72 of 144 patches, then half of them
    assert [(p.span, p.keep) for p in plans.values()] == [((1, 145), 72), ((0, 72), 36)]
    assert list(lengths.values()) == [(145, 73), (84, 48)]
    model = loaded("embedded")
    (got,) = tensors(block_map.traced.run())
    pixels, question = model.args
    with torch.no_grad():
        vision, positions = embedded_vision(model.model.vision, pixels, {1: cls_prune(1, 72)})
        fastv = VisualSpan(0, 72).sites("last", prune, 0.5)
        want = answer_from_patches(model.model, vision, question, positions, {1: fastv})
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_projector_sizes_cross_into_the_decoder_as_in_the_relaxed_graph(tmp_path: Path):
    """A projector site's sizes and `log size` bias reach the decoder's blocks and its site, as the
    relaxed graph carries them: at temperature 0 (hard ranks, whole keep counts) the relaxed graph
    and the emitted one give the same answer logits."""
    space = space_from(PROJECTOR_THEN_DECODER, tmp_path)
    relaxed = relax("embedded", space, SYMBOLIC)
    for module in relaxed.modules.values():
        module.temperature.fill_(0.0)
    (soft,) = tensors(relaxed.block_map.traced.run())
    block_map = fresh_block_map("embedded", SYMBOLIC)
    plans, lengths, _ = emit(block_map, space)
    assert [(p.span, p.keep) for p in plans.values()] == [((0, 144), 72), ((0, 72), 36)]
    assert list(lengths.values()) == [(144, 72), (84, 48)]
    (hard,) = tensors(block_map.traced.run())
    assert (soft - relaxed.reference[0]).abs().max() > 0.1  # the sites really change the answer
    torch.testing.assert_close(hard, soft, atol=1e-5, rtol=0)


def test_every_old_length_side_tensor_downstream_is_gathered():
    block_map, _, _ = emitted_tome()
    graph = block_map.graph_module.graph
    calls = [node for node in graph.nodes if node.op == "call_module" and str(node.target).startswith("deos_hard_")]
    reduced = nx.descendants(dataflow(block_map.graph_module), calls[0])
    old = [node for node in graph.nodes if isinstance(node.meta.get("val"), torch.Tensor)
           and any(size in OLD_LENGTHS for size in node.meta["val"].shape)]
    assert not reduced & set(old)  # no node after the first site still has an old length
    # where an old-length tensor meets the reduced tokens, it is gathered: here only the decoder's
    # learned visual positions `pos[:144]`, added to the projected tokens
    crossing = [(node, user) for node in old if node not in reduced for user in node.users if user in reduced]
    ((side, user),) = crossing
    assert user.target is gather_side and side.args[0].target == "decoder.pos" and side.args[1] == slice(None, 144)
    gathers = [node for node in graph.nodes if node.target in (gather_side, gather_tokens, gather_mask)]
    assert len(gathers) == 4 and all(node.args[0] in (side, *gathers) for node in gathers)  # one per site, chained


class MaskedMix(nn.Module):
    """A residual block attending under a given boolean mask."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x + self.fc(F.scaled_dot_product_attention(x[:, None], x[:, None], x[:, None], attn_mask=mask)[:, 0])


class TwoStacks(nn.Module):
    """A toy VLM, not the embedded model: an `encoder` stack over `[B, 1 + 16, 8]` (CLS first), glue
    (CLS dropped, learned positions added, a prefix and a suffix token around the 16 tokens), a
    `decoder` stack under a causal mask built from the length it reads off its input; the answer
    is the suffix token."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(Residual() for _ in range(2))
        self.decoder = nn.ModuleList(MaskedMix() for _ in range(2))
        self.pos, self.ends = nn.Parameter(torch.randn(16, 8)), nn.Parameter(torch.randn(2, 8))

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        ends = self.ends[:, None].expand(-1, x.shape[0], -1)
        return torch.cat([ends[0][:, None], x + pos, ends[1][:, None]], dim=1)

    def answer(self, h: torch.Tensor) -> torch.Tensor:
        mask = h.new_ones(h.shape[1], h.shape[1], dtype=torch.bool).tril()
        for layer in self.decoder:
            h = layer(h, mask)
        return h[:, -1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder:
            x = layer(x)
        return self.answer(self.embed(x[:, 1:], self.pos[:16]))


TWO_STACKS = """space two_stacks {
  tokens {
    reducible: visual
  }
  site vision.layers[0] {
    activate: on
    retain: 50%
    score: norm
    operator: prune
  }
}
"""


def test_a_generic_two_stack_model_equals_reference(tmp_path: Path):
    """The mechanism on another model: positions gathered in glue, tokens joined between two
    others, and the decoder's mask, computed from the reduced length, left as it is."""
    model = TwoStacks()
    x = torch.randn(2, 17, 8, generator=torch.Generator().manual_seed(0))
    loaded_model = LoadedModel("two", model, (x,), spans={"vision": (1, 17), "decoder": (1, 17)},
                               roles={"vision": "encoder", "decoder": "decoder"})
    block_map = build_block_map(trace(model, (x,), tracers=(SYMBOLIC,)), loaded_model.roles, loaded_model.spans)
    plans, lengths, _ = emit(block_map, space_from(TWO_STACKS, tmp_path))
    assert list(lengths.values()) == [(17, 9)]
    assert decoder_lengths(block_map) == {1 + 8 + 1}
    (got,) = tensors(block_map.traced.run())
    with torch.no_grad():
        h = model.encoder[0](x)
        kept = prune_plan(h.norm(dim=-1), 1, 16, 8)
        h = model.encoder[1](take(h, kept))
        want = model.answer(model.embed(h[:, 1:], model.pos[kept[:, 1:] - 1]))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


class Blocks(nn.Module):
    """Two residual blocks over `[B, 16, 8]` tokens, then `glue` on their output."""

    def __init__(self, glue: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Residual() for _ in range(2))
        self.glue = glue

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        if self.glue == "grid":  # the tokens re-laid out as a 4x4 grid
            return x.reshape(x.shape[0], 4, 4, x.shape[-1]).mean(dim=1)
        return x[:, :6].mean(dim=1)  # a slice cutting into the reducible span


@pytest.mark.parametrize(("glue", "what"), [("grid", "changes the layout of the token axis"),
                                            ("slice", "slices into the site's reducible span")])
def test_consumer_that_cannot_be_rebound_is_a_clear_error(glue: str, what: str, tmp_path: Path):
    model = LoadedModel("blocks", Blocks(glue), (torch.randn(2, 16, 8),), spans={"decoder": (0, 16)})
    block_map = build_block_map(trace(model.model, model.args, tracers=(SYMBOLIC,)), model.roles, model.spans)
    with pytest.raises(DeosCompileError, match=what) as caught:
        emit(block_map, space_from(PRUNE_FIRST, tmp_path))
    node = {"grid": "reshape", "slice": "getitem"}[glue]
    assert f"node `{node}" in caught.value.message and "reduced sequence" in caught.value.message
    assert "read sizes from the tensor" in caught.value.hint


def test_cli_emits_tome_on_the_embedded_model(tmp_path: Path):
    out = tmp_path / "embedded-tome"
    code, stdout, stderr = run_cli("emit", str(SPACES / "tome.deos"), "--model", "embedded", "--out", str(out))
    assert code == EXIT_OK, stderr
    assert "145 -> 129" in stdout and "97 -> 81" in stdout
    plan = json.loads((out / "plan.json").read_text())
    assert [(site["tokens_in"], site["tokens_out"]) for site in plan["sites"]] == [(145, 129), (129, 113), (113, 97), (97, 81)]
    model = loaded("embedded")
    got = torch.export.load(out / "model.pt2").module()(*model.args)
    block_map, _, _ = emitted_tome()
    torch.testing.assert_close(got[0], tensors(block_map.traced.run())[0], atol=1e-6, rtol=0)
