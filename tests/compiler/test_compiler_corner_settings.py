"""The operator settings `into: extra(n)` and `recycle: p` in the compiler: EViT (a fused extra
token), VisionZip (contextual targets) and SparseVLM v1 (recycling); their emitted graphs equal
hand-written eager references in the conformance matrix (test_compiler_conformance.py). Here:
recycling really changes the pruned output; the plans and artefacts state the extra tokens;
recycle and extra(n > 1) have a relaxed form whose identity point is the model and whose hard
limit is the emitted operator; extra(1) has none."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from compiler_models import loaded, tensors
from deos_dsl.compiler import LoadedModel, build_block_map, trace
from deos_dsl.compiler.hard_site import HardSite, plan_site
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.sites import RELAXED_PREFIX
from deos_dsl.compiler.trace import SYMBOLIC
from deos_dsl.errors import DeosCompileError
from deos_dsl.passes.insert_relaxed import insert_relaxed
from deos_dsl.pipeline import bind, compile_emitted, write_artifacts
from references import take
from relaxed_cases import Relaxed, bundled, fresh_block_map, relax
from test_compiler_discretise import QWEN, emit

VISION_SPAN = (1, 145)  # the embedded encoder: CLS + 144 patches


def vision_alone(tracer: str = SYMBOLIC):
    """The embedded vision encoder traced alone: its block map, module, pixels."""
    model = loaded("embedded")
    vision, pixels = model.model.vision, model.args[0]
    block_map = build_block_map(trace(vision, (pixels,), tracers=(tracer,)), {"vision": "layers"}, {"vision": VISION_SPAN})
    return block_map, vision, pixels


# ---- emission ------------------------------------------------------------------------------
def test_recycling_changes_the_pruned_output():
    """v1 differs from v2 (prune) only by the recycled transfer, and that transfer is real."""
    outputs = []
    for name in ("sparsevlm", "sparsevlm_prune"):
        block_map = fresh_block_map(QWEN)
        emit(block_map, bundled("sparsevlm.deos", name))
        outputs.append(tensors(block_map.traced.run())[0])
    assert outputs[0].shape == outputs[1].shape and (outputs[0] - outputs[1]).abs().max() > 1e-3


def test_evit_artifacts_state_the_fused_token_and_reload(tmp_path: Path):
    model = loaded("embedded")
    vision = LoadedModel("vision", model.model.vision, (model.args[0],), spans={"vision": VISION_SPAN},
                         roles={"vision": "layers"})
    emitted = compile_emitted(bundled("evit.deos", "evit"), vision)
    write_artifacts(emitted, tmp_path / "evit")
    sites = json.loads((tmp_path / "evit" / "plan.json").read_text())["sites"]
    assert [(s["keep"], s["extra"], s["fuse"], s["kept"], s["leaving"], s["tokens_in"], s["tokens_out"]) for s in sites] == [
        (101, 1, True, 101, 102, 145, 103), (72, 1, True, 72, 73, 103, 74), (52, 1, True, 52, 53, 74, 54)]
    program = torch.export.load(tmp_path / "evit" / "model.pt2")
    (got,) = tensors(program.module()(*emitted.args, **emitted.kwargs))
    (want,) = tensors(emitted.run())
    assert want.shape == (2, 54, 128)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


# ---- relaxed form --------------------------------------------------------------------------
def keep_everything(relaxed: Relaxed) -> None:
    """Gate on, keep ratio 1, hard top-k: every module at its keep-all identity point."""
    for module in relaxed.modules.values():
        module.alpha.data.fill_(math.inf)
        module.beta.data.fill_(1.0)
        module.temperature.fill_(0.0)


@pytest.mark.parametrize(("name", "file", "space"), [(QWEN, "sparsevlm.deos", "sparsevlm"),
                                                      ("embedded", "visionzip.deos", "visionzip")],
                         ids=["recycle", "extra-10"])
def test_relaxed_identity_point_is_the_model(name: str, file: str, space: str):
    relaxed = relax(name, bundled(file, space))
    assert relaxed.modules and all(m.recycle == 0.3 or m.contextual == 10 for m in relaxed.modules.values())
    keep_everything(relaxed)
    got = tensors(relaxed.block_map.traced.run())
    for a, b in zip(got, relaxed.reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for module in relaxed.modules.values():  # and a real keep ratio really reduces
        module.beta.data.fill_(0.5)
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(tensors(relaxed.block_map.traced.run()), relaxed.reference))


@pytest.mark.parametrize(("file", "space", "index"), [("sparsevlm.deos", "sparsevlm", 2),
                                                       ("visionzip.deos", "visionzip", 0)],
                         ids=["recycle", "extra-10"])
def test_relaxed_hard_limit_is_the_emitted_operator(file: str, space: str, index: int):
    """At temperature 0 with an integer keep count the relaxed site's tokens at the hard site's
    kept positions, and its sizes, are the hard site's; the others are masked out."""
    span = (1, 33)  # 32 reducible tokens: 50% and 9.375% are whole counts (16; 3 dominant)
    module = SiteModule("s", bundled(file, space).sites[index], span, 8)
    module.temperature.fill_(0.0)
    generator = torch.Generator().manual_seed(3)
    x, scores = torch.randn(2, 40, 8, generator=generator), torch.rand(2, 40, generator=generator)
    y, mask, sizes, bias = module(x, scores)
    plan = plan_site("s", module, span)
    hard, kept_idx, hard_sizes, _ = HardSite(plan)(x, scores)
    assert hard.shape[1] == 40 - 32 + plan.leaving and plan.leaving == (16 if plan.recycle else 13)
    torch.testing.assert_close(take(y, kept_idx), hard, atol=1e-5, rtol=0)
    torch.testing.assert_close(sizes.gather(1, kept_idx), hard_sizes, atol=1e-5, rtol=0)
    assert mask.sum(dim=1).tolist() == [float(hard.shape[1])] * 2 and (bias.gather(1, kept_idx) == 0).all()
    if plan.recycle:  # 5 of the 16 dropped tokens were recycled into the kept ones
        assert float(hard_sizes.sum(dim=1)[0]) == pytest.approx(40 - 32 + 16 + 5, abs=1e-4)


def test_fused_extra_token_has_no_relaxed_form():
    block_map, _, _ = vision_alone()
    space = bundled("evit.deos", "evit")
    bound = bind(space, block_map)
    with pytest.raises(DeosCompileError, match=r"`into: extra\(1\)`.*no shape-preserving relaxed form") as caught:
        insert_relaxed(space, block_map, bound.sites, bound.scores, bound.modules)
    assert "deos emit" in caught.value.hint
    assert not any(name.startswith(RELAXED_PREFIX) for name, _ in block_map.graph_module.named_children())  # nothing edited
    module = SiteModule("s", space.sites[0], VISION_SPAN, 128)  # emission builds it: only its forward refuses
    with pytest.raises(DeosCompileError, match="no shape-preserving relaxed form"):
        module(torch.randn(1, 145, 128), torch.rand(1, 145))
