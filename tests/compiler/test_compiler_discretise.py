"""Passes 4-6 (discretise, cleanup, verify) run directly on a block map (`emit`): static-length
graphs are refused with a clear error, cleanup removes the unused site outputs but keeps impure
nodes, and a recomputed attention score reads the mask its attention uses. That the emitted graph
of every baseline corner equals a hand-written eager reference and really shrinks is the
conformance matrix (test_compiler_conformance.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler_models import VISION_PRUNE, loaded
from deos_dsl.compiler import build_block_map, trace
from deos_dsl.compiler.graph_edit import sdpa_argument
from deos_dsl.compiler.sites import META_SDPA, is_impure
from deos_dsl.compiler.trace import SYMBOLIC
from deos_dsl.errors import DeosCompileError
from deos_dsl.frontend import ir, loads
from deos_dsl.passes.cleanup import cleanup
from deos_dsl.passes.discretise import discretise
from deos_dsl.passes.verify import verify
from deos_dsl.pipeline import bind
from relaxed_cases import bundled, fresh_block_map, space_from

QWEN = "hf:Qwen2Model"


def emit(block_map, space: ir.Space):
    """Bind, score, discretise, clean up and verify; returns (plans, lengths, removed nodes)."""
    bound = bind(space, block_map)
    plans, calls = discretise(block_map, bound.sites, bound.scores, bound.modules)
    removed = cleanup(block_map.graph_module)
    return plans, verify(block_map.traced, calls, plans), removed


# the pass refuses a static export; emit first tries the routes that re-trace one (the HF
# encoders emit: test_compiler_conformance.py; `fixed_length` is refused naming what was tried:
# test_compiler_emit_static.py)
@pytest.mark.parametrize(("name", "space"), [("embedded", bundled("fastv.deos", "fastv")),
                                              ("module:compiler_models:fixed_length", loads(VISION_PRUNE)[0])])
def test_static_length_exports_are_refused(name: str, space: ir.Space):
    block_map = fresh_block_map(name)
    bound = bind(space, block_map)
    with pytest.raises(DeosCompileError, match="STATIC sequence length") as caught:
        discretise(block_map, bound.sites, bound.scores, bound.modules)
    assert "symbolic_trace" in caught.value.hint


def test_cleanup_removes_unused_site_outputs_and_keeps_impure_nodes():
    block_map = fresh_block_map(QWEN)
    # whatever the trace holds that torch.fx calls impure (export's guard function, ...), measured
    impure = [n.name for n in block_map.graph_module.graph.nodes if is_impure(n) and n.op not in ("placeholder", "output")]
    assert impure
    _, _, removed = emit(block_map, bundled("fastv.deos", "fastv"))
    names = {n.name for n in block_map.graph_module.graph.nodes}
    assert set(impure) <= names
    assert any(name.startswith("getitem") for name in removed)  # the site outputs nothing reads


MERGE_THEN_CLS_PRUNE = """space merge_then_prune {
  tokens {
    reducible: visual
    protected: cls
  }
  site vision.layers[0] {
    activate: on
    retain: drop 16 tokens
    score: similarity(to: tokens)
    operator: merge(proportional: on, affinity: keys)
  }
  site vision.layers[2] {
    activate: on
    retain: 50%
    score: attention(query: cls)
    operator: prune
  }
}
"""


def test_recomputed_scores_read_the_mask_their_attention_uses(tmp_path: Path):
    """A proportional site biases later attention with `log size`; the attention score of a later
    site, recomputed from one of those attention nodes, must read the same biased mask."""
    model = loaded("embedded")
    vision = model.model.vision
    block_map = build_block_map(trace(vision, (model.args[0],), tracers=(SYMBOLIC,)), {"vision": "layers"},
                                {"vision": (1, 145)})
    _, lengths, _ = emit(block_map, space_from(MERGE_THEN_CLS_PRUNE, tmp_path))
    assert list(lengths.values()) == [(145, 129), (129, 65)]
    recomputed = [node for node in block_map.graph_module.graph.nodes if META_SDPA in node.meta]
    assert recomputed, "the pruning site's attention score was not recomputed"
    for score in recomputed:
        attention = score.meta[META_SDPA]
        assert score.args[2] is sdpa_argument(attention, "attn_mask") is not None
        assert score.args[3] is False
