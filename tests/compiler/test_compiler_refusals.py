"""What the architecture probe found, on models written here (so that no transformers release
changes them): each kind of model is supported, or refused at `compile` with its named reason.

- prefix / suffix tokens around the patches (CLS, distillation, registers): only the patches reducible;
- flattened-patch image inputs: a vision stack, every token a patch;
- a key-value cache among the inputs, a random forward: refused at trace, by name;
- model code after a site that needs the dense count: `ReducedModelError`, at compile as at emit;
- a length that depends on input values: refused at binding; a size the cost model meets: `CostError`;
- an edited graph fake tensors cannot replay: `DeosCompileError`, not an internal error.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from torch import fx, nn

from compiler_models import VISION_PRUNE, Layers, Residual
from deos_dsl import cli
from deos_dsl.compiler import LoadedModel, UntraceableModelError, build_block_map, trace
from deos_dsl.compiler.errors import ReducedModelError
from deos_dsl.compiler.graph_edit import refresh
from deos_dsl.compiler.image_tokens import compact_image_tokens
from deos_dsl.compiler.trace import SYMBOLIC, TracedModel
from deos_dsl.cost.shapes import Dims, Shapes
from deos_dsl.errors import CostError, DeosCompileError
from deos_dsl.frontend import loads
from deos_dsl.passes.attach_cost import attach_cost as attach_cost_pass
from deos_dsl.pipeline import Emitted, bind_model, check_space, compile_emitted

SPACES = Path(__file__).resolve().parents[2] / "spaces"
PRUNE = "space s {{ site vision.layers[0] {{ activate: on\n retain: 50%\n score: norm\n operator: prune }} }}"


class Patches(nn.Module):
    """A ViT-style encoder on 32x32 images (16 patches of 8x8): `prefix` learned tokens before
    the patches and `suffix` after them, then two residual blocks."""

    def __init__(self, prefix: int = 1, suffix: int = 0) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.prefix, self.suffix = nn.Parameter(torch.randn(1, prefix, 8)), nn.Parameter(torch.randn(1, suffix, 8))
        self.layers = nn.ModuleList([Residual(), Residual()])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch(pixel_values).flatten(2).transpose(1, 2)
        batch = patches.shape[0]
        x = torch.cat([self.prefix.expand(batch, -1, -1), patches, self.suffix.expand(batch, -1, -1)], dim=1)
        for layer in self.layers:
            x = layer(x)
        return x


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("prefix", "suffix", "span"), [(1, 0, (1, 17)), (1, 4, (1, 17)), (5, 0, (5, 21)), (0, 0, (0, 16))])
def test_tokens_around_the_patches_are_not_reducible(prefix: int, suffix: int, span: tuple[int, int]):
    """CLS + registers (DINOv2), CLS + distillation (DeiT), registers after the patches: the
    reducible span is exactly the patches' part of the concatenation."""
    torch.manual_seed(0)
    model = Patches(prefix, suffix).eval().requires_grad_(False)
    block_map = build_block_map(trace(model, (_images(),)))
    assert block_map.stacks[0].role == "vision" and block_map.spans["vision"] == span
    checked = check_space(loads(PRUNE.format())[0], LoadedModel("patches", model, (_images(),)))
    (n_in, n_out), = checked.emitted.lengths.values()
    assert (n_in, n_out) == (prefix + 16 + suffix, prefix + 8 + suffix)


class FlatPatches(nn.Module):
    """Flattened 8x8 patches `[B, P, 3*8*8]` (SigLIP2, Pixtral, Qwen2-VL style) embedded by a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * 8 * 8, 8)
        self.encoder = Layers([Residual(), Residual()])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(pixel_values))


def test_flattened_patches_feed_a_vision_stack_of_patches_only():
    torch.manual_seed(0)
    model, patches = FlatPatches().eval().requires_grad_(False), torch.rand(2, 16, 192)
    block_map = build_block_map(trace(model, (), {"pixel_values": patches}))
    assert block_map.stacks[0].role == "vision" and block_map.spans["vision"] == (0, 16)
    checked = check_space(loads(PRUNE.format())[0], LoadedModel("flat", model, kwargs={"pixel_values": patches}))
    assert list(checked.emitted.lengths.values()) == [(16, 8)]


class DynamicCache:
    """Stands for transformers' key-value cache objects (matched by the class name)."""


class TakesCache(nn.Module):
    def forward(self, x: torch.Tensor, past_key_values: object = None) -> torch.Tensor:
        return x * 2


def test_a_cache_object_among_the_inputs_is_refused_by_name():
    with pytest.raises(UntraceableModelError) as caught:
        trace(TakesCache(), (torch.randn(2, 3),), {"past_key_values": DynamicCache()})
    assert "`past_key_values` is a DynamicCache (a key-value cache object)" in caught.value.message
    assert "use_cache=False" in caught.value.hint


class GridImages(nn.Module):
    """A VLM-like model whose image features are reshaped to a fixed 4x4 grid (Gemma3's pooling,
    Aya's pixel shuffle): fewer vision tokens break the model's own code."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(image_token_id=7)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values.reshape(2, 4, 4, 8)


def test_model_code_that_needs_the_dense_count_is_a_reduced_model_error(monkeypatch: pytest.MonkeyPatch):
    """The emitted model is run once at compile (and emit); its failure, and the image features'
    recount on a reduced tower, are the model's limits with the way out, not internal errors."""
    ids = torch.full((2, 20), 7)
    with pytest.raises(ReducedModelError) as caught:
        compact_image_tokens(GridImages(), (), {"input_ids": ids, "pixel_values": torch.randn(2, 8, 8)})
    assert caught.value.message.startswith("GridImages.get_image_features fails on the reduced tokens: RuntimeError: "
                                           "shape '[2, 4, 4, 8]' is invalid")
    assert "place the site after it, at the projector or in the decoder" in caught.value.hint
    loaded = LoadedModel("grid", GridImages(), kwargs={"input_ids": ids, "pixel_values": torch.randn(2, 8, 8)})
    emitted = Emitted("grid", "s", None, {}, {}, lambda **inputs: GridImages().get_image_features(inputs["pixel_values"]),
                      (), loaded.kwargs)
    monkeypatch.setattr(sys.modules["deos_dsl.pipeline.emit"], "_emitted", lambda space, model, settings: emitted)
    with pytest.raises(ReducedModelError) as caught:
        compile_emitted(loads(PRUNE.format())[0], loaded)
    assert caught.value.message.startswith("the emitted model, run on its example inputs, fails on the reduced tokens")


def test_compile_refuses_what_emit_would_refuse(tmp_path: Path):
    """`deos compile` ran only the binding: a model no emit route can reduce compiled "ok"."""
    out, err = io.StringIO(), io.StringIO()
    space = tmp_path / "vision_prune.deos"
    space.write_text(VISION_PRUNE)
    code = cli.main(["compile", str(space), "--model", "module:compiler_models:fixed_length"],
                    Console(file=out, width=300), Console(file=err, width=300))
    assert code == 1 and "STATIC sequence length" in err.getvalue() and "Traceback" not in err.getvalue()


def test_compile_prints_the_cost_and_the_emitted_sites():
    out = io.StringIO()
    code = cli.main(["compile", str(SPACES / "fastv.deos"), "--model", "embedded"], Console(file=out, width=300),
                    Console(file=io.StringIO(), width=300))
    lines = out.getvalue().splitlines()
    assert code == 0
    cost = next(line for line in lines if line.startswith("cost: "))
    dense, reduced = (int(part.replace(",", "")) for part in cost.removeprefix("cost: ").split(" FLOPs")[0].split(" -> "))
    assert reduced < dense
    assert "emit: ok by torch.fx.symbolic_trace" in lines
    assert "site decoder.layers.1@0: keeps 72/144 reducible, tokens 156 -> 84" in lines


class SelectsByValue(nn.Module):
    """Keeps the tokens whose first feature is positive (as Idefics3 drops padding images by value)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Residual(), Residual()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, (x[0, :, 0] > 0).nonzero().flatten()]
        for layer in self.layers:
            x = layer(x)
        return x


def test_a_stream_whose_length_depends_on_input_values_is_refused_at_binding():
    torch.manual_seed(0)
    model = SelectsByValue().eval().requires_grad_(False)
    space = loads("space s { tokens { reducible: all }\n site decoder.layers[0] { activate: on\n retain: 1 tokens\n"
                  " score: norm\n operator: prune } }")[0]
    with pytest.raises(DeosCompileError) as caught:
        bind_model(space, LoadedModel("select", model, (torch.randn(2, 8, 8),)))
    assert caught.value.message == "block `layers.0`: the length of its stream depends on the input values"


def test_a_size_that_depends_on_input_values_is_a_cost_error():
    """A data-dependent size reached by the cost model (Idefics3's image batch) is named."""
    torch.manual_seed(0)
    model = SelectsByValue().eval().requires_grad_(False)
    with pytest.raises(CostError) as caught:
        attach_cost_pass(build_block_map(trace(model, (torch.randn(2, 8, 8),)), spans={"decoder": (0, 1)}))
    assert caught.value.message.startswith("a tensor size depends on the input values")


@fx.wrap
def _item_width(x: torch.Tensor) -> torch.Tensor:
    return x[:, : int(x.abs().sum() > 0) + 1]


def test_a_graph_fake_tensors_cannot_replay_is_a_compile_error():
    gm = fx.symbolic_trace(lambda x: _item_width(x) * 2)
    traced = TracedModel(gm, SYMBOLIC, None, (torch.randn(2, 3),), {})
    with pytest.raises(DeosCompileError) as caught:
        refresh(traced)
    assert caught.value.message.startswith("the edited graph cannot be re-run on fake tensors: ")


def test_tile_pads_short_repeats_with_ones():
    """`x.tile((2,))` on [16, 4] repeats the last dim (DINOv3's position grid): it was an IndexError."""
    shapes = Shapes({})
    src = Dims.constant((16, 4))
    call = type("Call", (), {"name": "tile", "args": [src, [2]], "arg": lambda self, i, name: self.args[i]})()
    assert shapes.repeat(call, (16, 8)).values == (16, 8)
