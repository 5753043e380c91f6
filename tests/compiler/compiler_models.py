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


def tiny_stack() -> LoadedModel:
    """A `module:` factory returning a LoadedModel: two residual blocks in a ModuleList."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc(x)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(Residual() for _ in range(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x)
            return x

    return LoadedModel("tiny", Tiny(), (torch.randn(2, 5, 8),), spans={"decoder": (0, 5)})
