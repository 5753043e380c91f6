"""Fresh (uncached) relaxed graphs for the pass tests: the passes edit the graph in place, so each
test module traces its own copy instead of the session-cached graphs of `compiler_models`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx

from compiler_models import loaded
from deos_dsl.compiler import BlockMap, build_block_map, trace
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.sites import BoundSite, SiteScores
from deos_dsl.frontend import ir, load_spaces
from deos_dsl.pipeline import bind
from deos_dsl.pipeline import relax as relax_bound

SPACES = Path(__file__).resolve().parents[2] / "spaces"

# Learned spaces: every relaxed parameter is searched (decoders: attention scores from the last
# and text queries, key affinity; vision encoders: ToMe-like redundancy with proportional attention).
DECODER = """space learned_decoder {
  tokens {
    reducible: visual
    protected: text, system
  }
  defaults {
    activate: learned init 0.5
    retain: learned [10%, 100%] init 50%
    score: attention(query: last)
    operator: unified {
      gamma: learned [0, 1] init 0.2
      tau: learned log [0.01, 10] init 0.5
      rho: learned [0, 2] init 0.3
      nu: learned [0, 1] init 0.8
      affinity: keys
    }
  }
  site decoder.layers[0] {}
  site decoder.layers[1] { score: attention(query: text) }
}
"""

# the decoder space on a block that computes attention eagerly: no key features, `last` rows only
EAGER_LAST = DECODER.replace("affinity: keys", "affinity: hidden").replace(
    "site decoder.layers[1] { score: attention(query: text) }", "site decoder.layers[1] {}")

VISION = """space learned_vision {
  tokens {
    reducible: visual
    protected: cls
  }
  defaults {
    activate: learned init 0.5
    retain: learned [25%, 100%] init 75%
    score: similarity(to: tokens)
    operator: unified {
      gamma: learned [0, 1] init 0.5
      tau: learned log [0.01, 10] init 0.1
      nu: learned [0, 1] init 0.9
      proportional: on
      affinity: keys
    }
  }
  site vision.layers[0] {}
  site vision.layers[1] { score: attention(query: cls) }
}
"""

DECODERS = ("embedded", "hf:LlavaForConditionalGeneration", "hf:Qwen2Model")


def space_from(text: str, tmp: Path) -> ir.Space:
    path = tmp / "space.deos"
    path.write_text(text)
    (space,) = load_spaces(path)
    return space


def bundled(file: str, name: str) -> ir.Space:
    return next(s for s in load_spaces(SPACES / file) if s.name == name)


def fresh_block_map(name: str, tracer: str = "torch.export") -> BlockMap:
    model = loaded(name)
    return build_block_map(trace(model.model, model.args, model.kwargs, tracers=(tracer,)), model.roles, model.spans)


@dataclass
class Relaxed:
    """A relaxed graph and what built it."""

    block_map: BlockMap
    sites: list[BoundSite]
    scores: dict[str, SiteScores]
    modules: dict[str, SiteModule]
    reference: list[torch.Tensor]

    @property
    def gm(self) -> fx.GraphModule:
        return self.block_map.graph_module


def relax(name: str, space: ir.Space, tracer: str = "torch.export") -> Relaxed:
    """Trace `name` afresh, record its output, then bind, insert scores and relaxed sites."""
    from compiler_models import tensors

    block_map = fresh_block_map(name, tracer)
    reference = tensors(block_map.traced.run())
    bound = bind(space, block_map)
    relax_bound(bound)
    return Relaxed(block_map, bound.sites, bound.scores, bound.modules, reference)
