"""Shared helpers for the cost tests: cached conformance models, FlopCounterMode per node and
per call, spaces.

Each tiny trace runs once per session (the cost pass only writes `node.meta`, so traced
graphs are shared; the sites-and-scores pipeline traces afresh through `cost_space`).
"""

from __future__ import annotations

import functools
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from torch import fx
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

os.environ["HF_HUB_OFFLINE"] = "1"

from deos_dsl.compiler import BlockMap, LoadedModel, build_block_map, resolve_model, trace  # noqa: E402
from deos_dsl.compiler.trace import EXPORT, SYMBOLIC  # noqa: E402
from deos_dsl.cost import Cost  # noqa: E402
from deos_dsl.frontend import ir, load_spaces  # noqa: E402
from deos_dsl.passes.attach_cost import attach_cost  # noqa: E402

torch.set_num_threads(1)

SPACES = Path(__file__).resolve().parents[2] / "spaces"
# the cost suite: the embedded model with both tracers, the five core tiny HF models exported (the
# architecture matrix, tests/compiler/test_compiler_zoo.py, costs every other one)
HF_CORE = ("CLIPVisionModel", "SiglipVisionModel", "ViTModel", "LlavaForConditionalGeneration", "Qwen2Model")
CASES = (("embedded", EXPORT), ("embedded", SYMBOLIC), *((f"hf:{name}", EXPORT) for name in HF_CORE))
loaded: Callable[[str], LoadedModel] = functools.cache(resolve_model)


@functools.cache
def mapped(name: str, tracer: str = EXPORT) -> tuple[BlockMap, Cost]:
    """The block map of `name` traced with `tracer`, and its dense cost (no space)."""
    model = loaded(name)
    block_map = build_block_map(trace(model.model, model.args, model.kwargs, tracers=(tracer,)), model.roles, model.spans)
    return block_map, attach_cost(block_map, model_name=name)


def bundled(file: str, name: str) -> ir.Space:
    return next(s for s in load_spaces(SPACES / file) if s.name == name)


def counted(function: Callable[[], Any], math: bool = False) -> int:
    """FlopCounterMode's total for `function()`; `math` forces the math attention backend
    (whose matmuls FlopCounterMode sees; the CPU fused kernel counts 0)."""
    with sdpa_kernel(SDPBackend.MATH) if math else nullcontext(), FlopCounterMode(display=False) as mode:
        function()
    return mode.get_total_flops()


class PerNode(fx.Interpreter):
    """Runs a graph, recording FlopCounterMode's count of every node in `counts`."""

    def __init__(self, gm: fx.GraphModule, math: bool = False) -> None:
        super().__init__(gm)
        self.math = math
        self.counts: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        result: list[Any] = []
        self.counts[n] = counted(lambda: result.append(super(PerNode, self).run_node(n)), self.math)
        return result[0]


def placeholders(gm: fx.GraphModule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """The graph's positional inputs from a model call's `args` / `kwargs`."""
    names = [node.target for node in gm.graph.find_nodes(op="placeholder")]
    return list(args) + [kwargs.get(name) for name in names[len(args):]]
