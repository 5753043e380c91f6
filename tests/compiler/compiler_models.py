"""Shared, cached traced models for the compiler tests (each tiny export runs once per session).

Also the user factories that `module:compiler_models:<name>` resolves in the registry tests.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn
from torch.utils import _pytree as pytree

os.environ["HF_HUB_OFFLINE"] = "1"

from deos_dsl.compiler import BlockMap, LoadedModel, TracedModel, build_block_map, resolve_model, trace  # noqa: E402
from deos_dsl.compiler.trace import EXPORT, SYMBOLIC  # noqa: E402

torch.set_num_threads(1)

HF_MODELS = ("hf:CLIPVisionModel", "hf:SiglipVisionModel", "hf:ViTModel", "hf:LlavaForConditionalGeneration",
             "hf:Qwen2Model")
# (model name, tracer): the embedded model with both tracers, the HF models with export
CASES = (("embedded", EXPORT), ("embedded", SYMBOLIC), *((name, EXPORT) for name in HF_MODELS))


@functools.cache
def loaded(name: str) -> LoadedModel:
    return resolve_model(name)


@functools.cache
def traced(name: str, tracer: str = EXPORT) -> TracedModel:
    model = loaded(name)
    return trace(model.model, model.args, model.kwargs, tracers=(tracer,))


@functools.cache
def block_map(name: str, tracer: str = EXPORT) -> BlockMap:
    model = loaded(name)
    return build_block_map(traced(name, tracer), model.roles, model.spans)


def tensors(output: object) -> list[torch.Tensor]:
    """The tensor leaves of a model output (HF ModelOutput, tuple or tensor)."""
    return [leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)]


class DataDependent(nn.Module):
    """Branches on a tensor VALUE: torch.export and fx.symbolic_trace both reject it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        for _ in range(int(y.sum().item() > 0) + 1):
            y = y * 2 if y.mean() > 0 else y - 1
        return y


def untraceable() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """A `module:` factory returning (model, args)."""
    return DataDependent(), (torch.randn(2, 3, 4),)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x)


class Layers(nn.Module):
    """`blocks` in the ModuleList `layers`, run in sequence."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def tiny_stack() -> LoadedModel:
    """A `module:` factory returning a LoadedModel: two residual blocks in a ModuleList."""
    return LoadedModel("tiny", Layers([Residual(), Residual()]), (torch.randn(2, 5, 8),), spans={"decoder": (0, 5)})


class TokenMixer(nn.Module):
    """An MLP-Mixer block: a residual Linear ACROSS its 64 tokens, so its graph fixes the length."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x.transpose(1, 2)).transpose(1, 2)


class FixedLength(nn.Module):
    """A patch encoder (64 patches of 64x64 images) whose shape check breaks fx.symbolic_trace
    and whose token-mixing blocks fix the length: no emit route can reduce it."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.encoder = Layers([TokenMixer(), TokenMixer()])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch(pixels).flatten(2).transpose(1, 2)
        if x.shape[1] != 64:
            raise ValueError("the image must give 64 patches")
        return self.encoder(x)


# a vision space that needs no attention (FixedLength's blocks mix tokens with a Linear): every
# encoder layer prunes half its tokens by norm
VISION_PRUNE = """space vision_prune {
  site vision.layers[*] {
    retain: 50%
    score: norm
    operator: prune
  }
}
"""


def fixed_length() -> LoadedModel:
    """A `module:` factory: `FixedLength`, which no emit route can reduce."""
    torch.manual_seed(0)
    return LoadedModel("fixed", FixedLength(), (torch.rand(2, 3, 64, 64),))


def raising() -> None:
    """A `module:` factory that fails as a user's factory can (its error is the model's, not deos's)."""
    raise RuntimeError("weights missing")


def eager_qwen2() -> LoadedModel:
    """A `module:` factory: `hf:Qwen2Model` with `attn_implementation="eager"` (matmul + softmax)."""
    model = resolve_model("hf:Qwen2Model")
    model.model.config._attn_implementation = "eager"
    model.name = "module:compiler_models:eager_qwen2"
    return model
