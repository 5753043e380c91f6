"""Emit on models whose whole export fixes the sequence length (`deos_dsl.compiler.stack_retrace`):
HF CLIP / SigLIP / ViT encoders, LLaVA's vision tower and LLaVA's projector (their emitted whole
models equal hand-written eager references and really shrink in the conformance matrix,
test_compiler_conformance.py). Here: the whole-model `.pt2` reloads without deos, `deos emit`
works, and what no route can emit (or the tiny LLaVA's 4x4 patch grid cannot satisfy) is refused
with a clear error."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from test_compiler_emit import run_cli, run_without_deos

from compiler_models import VISION_PRUNE, fixed_length, loaded, tensors
from deos_dsl.cli import EXIT_OK
from deos_dsl.errors import DeosCompileError
from deos_dsl.frontend import ir, loads
from deos_dsl.compiler.image_tokens import CompactImageTokens
from deos_dsl.pipeline import Emitted, compile_emitted, export_program, unsafe_payloads
from relaxed_cases import SPACES, bundled, space_from

CLIP, LLAVA = "hf:CLIPVisionModel", "hf:LlavaForConditionalGeneration"
CONTAINER = "torch.export (stack container `{}` on its input, dynamic length)"
PROJECTOR = "model.multi_modal_projector"

# a bundled space with more settings
VARIANT = """import "{path}"

space variant extends {space} {{
{more}}}
"""
DECODER_SITE = """  site decoder.layers[0] {
    activate: on
    retain: 50%
    score: attention(query: last)
    operator: prune
  }
"""


def variant(space: str, more: str, tmp_path: Path) -> ir.Space:
    return space_from(VARIANT.format(path=SPACES / f"{space}.deos", space=space, more=more), tmp_path)


@functools.cache
def tome(name: str) -> Emitted:
    return compile_emitted(bundled("tome.deos", "tome"), loaded(name))


def assert_outputs_equal(got: list[torch.Tensor], want: list[torch.Tensor], atol: float) -> None:
    assert [t.shape for t in got] == [t.shape for t in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


def test_llava_sites_on_the_vision_tower_and_the_decoder_emit_in_two_stages(tmp_path: Path):
    """The vision tower is re-traced alone (fewer image placeholders reach the decoder), then the
    decoder's site is emitted on that reduced model: both reduce, the output is that much shorter."""
    model = loaded(LLAVA)
    emitted = compile_emitted(variant("tome", DECODER_SITE, tmp_path), model)
    assert all(plan.active for plan in emitted.plans.values())
    vision = [name for name in emitted.plans if "vision_tower" in name]
    (decoder,) = [name for name in emitted.plans if "language_model" in name]
    # every plan, and plan.json, names its site as the space does (site entry 1 is the decoder's),
    # not as the stage that emitted it (`@0`): `deos cost --schedule` and `deos evaluate` match them
    assert decoder.endswith("@1") and all(plan.name == name for name, plan in emitted.plans.items())
    assert [entry["name"] for entry in emitted.plan_json()["sites"]] == list(emitted.plans)
    placeholders = int((model.kwargs["input_ids"][0] == model.model.config.image_token_id).sum())
    assert emitted.plans[decoder].entering in {emitted.plans[name].leaving for name in vision}  # what the tower left
    assert emitted.plans[decoder].entering < placeholders
    dropped = placeholders - emitted.plans[decoder].leaving
    n_in, n_out = emitted.lengths[decoder]
    assert n_in - n_out == emitted.plans[decoder].entering - emitted.plans[decoder].leaving > 0
    with torch.no_grad():
        logits = emitted.run().logits
    assert logits.shape[1] == model.kwargs["input_ids"].shape[1] - dropped


def test_llava_a_projector_site_left_off_beside_vision_and_decoder_sites_emits_nothing(tmp_path: Path):
    """A site the schedule leaves off is no site: the vision tower + decoder space with a projector
    entry set off emits in two stages, with the same logits and plans as without that entry,
    and reports the projector's plan inactive (it used to be refused as a third stack)."""
    model = loaded(LLAVA)
    without = compile_emitted(variant("tome", DECODER_SITE, tmp_path), model)
    off = "  site projector {\n    activate: off\n    retain: 50%\n    score: norm\n    operator: prune\n  }\n"
    emitted = compile_emitted(variant("tome", DECODER_SITE + off, tmp_path), model)
    (projector,) = [name for name in emitted.plans if name.startswith(PROJECTOR)]
    assert not emitted.plans[projector].active and projector not in emitted.lengths
    assert {name: plan.leaving for name, plan in emitted.plans.items() if name != projector} == \
        {name: plan.leaving for name, plan in without.plans.items()}
    with torch.no_grad():
        torch.testing.assert_close(emitted.run().logits, without.run().logits, atol=0, rtol=0)
    # the decoder's entry off too: still two stages (the decoder exists there), the tower alone reduces
    decoder_off = DECODER_SITE.replace("activate: on", "activate: off")
    tower_only = compile_emitted(variant("tome", decoder_off + off, tmp_path), model)
    assert [name for name, plan in tower_only.plans.items() if plan.active] == \
        [name for name, plan in tome(LLAVA).plans.items() if plan.active]
    with torch.no_grad():
        torch.testing.assert_close(tower_only.run().logits, tome(LLAVA).run().logits, atol=1e-5, rtol=0)


PROJECTOR_SITE = "  site projector {\n    activate: on\n    retain: 50%\n    score: norm\n    operator: prune\n  }\n"


def test_llava_sites_on_the_vision_tower_the_projector_and_the_decoder_emit_in_stages(tmp_path: Path):
    """Vision tower, then projector, then decoder, each stage on the model the previous one
    reduced: every site reduces what the one before it left, one compaction of the image
    placeholders feeds the decoder, the re-exported program equals the emitted model, and a
    projector site that keeps every token changes no logit."""
    model = loaded(LLAVA)
    emitted = compile_emitted(variant("tome", PROJECTOR_SITE + DECODER_SITE, tmp_path), model)
    assert all(plan.active for plan in emitted.plans.values())
    vision = [plan for name, plan in emitted.plans.items() if "vision_tower" in name]
    (projector,) = [plan for name, plan in emitted.plans.items() if name.startswith(PROJECTOR)]
    (decoder,) = [plan for name, plan in emitted.plans.items() if "language_model" in name]
    assert (projector.name[-2:], decoder.name[-2:]) == ("@1", "@2")  # the space's own entries
    placeholders = int((model.kwargs["input_ids"][0] == model.model.config.image_token_id).sum())
    assert projector.entering in {plan.leaving for plan in vision}  # what the tower's feature layer left
    assert projector.entering < placeholders
    assert decoder.entering == projector.leaving < projector.entering
    assert decoder.leaving < decoder.entering
    assert isinstance(emitted.module, CompactImageTokens) and not isinstance(emitted.module.module, CompactImageTokens)
    assert emitted.module.placeholders == placeholders and emitted.module.features == projector.leaving
    with torch.no_grad():
        logits = emitted.run().logits
        exported = export_program(emitted).module()(*emitted.args, **emitted.kwargs)
    assert logits.shape[1] == model.kwargs["input_ids"].shape[1] - (placeholders - decoder.leaving)
    torch.testing.assert_close(exported[0], logits, atol=1e-5, rtol=0)
    keep_all = compile_emitted(variant("tome", PROJECTOR_SITE.replace("50%", "100%") + DECODER_SITE, tmp_path), model)
    without = compile_emitted(variant("tome", DECODER_SITE, tmp_path), model)
    with torch.no_grad():
        torch.testing.assert_close(keep_all.run().logits, without.run().logits, atol=1e-5, rtol=0)
    # the tower and the projector alone (no decoder site): two stages, the projector on the reduced tower
    alone = compile_emitted(variant("tome", PROJECTOR_SITE, tmp_path), model)
    (projected,) = [plan for name, plan in alone.plans.items() if name.startswith(PROJECTOR)]
    assert projected.entering == projector.entering and projected.leaving == projector.leaving
    with torch.no_grad():
        assert alone.run().logits.shape[1] == model.kwargs["input_ids"].shape[1] - (placeholders - projected.leaving)


@functools.cache
def pooled_projector() -> Emitted:
    return compile_emitted(bundled("pool2x2.deos", "pool2x2"), loaded(LLAVA))


@pytest.mark.parametrize(("more", "error"), [
    ("  site projector {\n    operator: pool(window: 2x2, proportional: on)\n  }\n",
     "proportional attention .* cannot reach the decoder"),
    ("  site projector {\n    operator: pool(window: 8x8)\n  }\n", "a 8x8 window does not fit the 4x4 grid"),
    ("  tokens {\n    reducible: span(2, 12)\n  }\n", "score `position` needs a square grid .* holds 10"),
], ids=["proportional", "window", "not-square"])
def test_llava_projector_sites_it_cannot_emit_are_refused(more: str, error: str, tmp_path: Path):
    with pytest.raises(DeosCompileError, match=error):
        compile_emitted(variant("pool2x2", more, tmp_path), loaded(LLAVA))


def test_a_stack_no_route_reduces_is_refused_naming_what_was_tried():
    with pytest.raises(DeosCompileError) as caught:
        compile_emitted(loads(VISION_PRUNE)[0], fixed_length())
    message = caught.value.message
    assert "STATIC sequence length at `encoder.layers`" in message
    assert "- torch.fx.symbolic_trace: TraceError" in message
    assert f"- {CONTAINER.format('encoder')}: ValueError: export specialised the sequence length" in message
    assert "token-mixing" in caught.value.hint


@pytest.fixture(scope="module")
def clip_emitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("emit-static") / "clip-tome"
    code, stdout, stderr = run_cli("emit", str(SPACES / "tome.deos"), "--model", CLIP, "--out", str(out))
    assert code == EXIT_OK, stderr
    return out, stdout


def test_cli_emits_tome_on_clip(clip_emitted: tuple[Path, str]):
    out, stdout = clip_emitted
    assert "site encoder.layers.0@0: keeps 48/64 reducible, tokens 65 -> 49" in stdout
    assert "site encoder.layers.1@0: keeps 32/48 reducible, tokens 49 -> 33" in stdout
    plan = json.loads((out / "plan.json").read_text())
    assert (plan["model"], plan["tracer"]) == (CLIP, CONTAINER.format("encoder"))
    assert [(s["name"], s["tokens_in"], s["tokens_out"]) for s in plan["sites"]] == [
        ("encoder.layers.0@0", 65, 49), ("encoder.layers.1@0", 49, 33)]
    code = (out / "model.py").read_text()  # the container's graph
    assert "deos_hard_0" in code and "deos_hard_1" in code and "pixel_values" not in code
    assert unsafe_payloads(out / "model.pt2") == []


def test_whole_model_pt2_reloads_and_runs_without_deos(clip_emitted: tuple[Path, str], tmp_path: Path):
    out, _ = clip_emitted
    result = tome(CLIP)
    got = run_without_deos(out / "model.pt2", result, tmp_path)  # the whole model: pixels in
    assert [t.shape for t in got] == [(2, 33, 32), (2, 32)]  # last_hidden_state, pooled CLS
    assert_outputs_equal(got, tensors(result.run()), atol=1e-6)


def test_cli_emits_pool2x2_on_llava_and_its_pt2_reloads(tmp_path: Path):
    out = tmp_path / "llava-pool2x2"
    code, stdout, stderr = run_cli("emit", str(SPACES / "pool2x2.deos"), "--model", LLAVA, "--out", str(out))
    assert code == EXIT_OK, stderr
    assert f"site {PROJECTOR}@0: keeps 4/16 reducible, tokens 16 -> 4" in stdout
    assert json.loads((out / "plan.json").read_text())["tracer"] == pooled_projector().traced.tracer
    got = run_without_deos(out / "model.pt2", pooled_projector(), tmp_path)  # the whole model: ids and pixels in
    assert_outputs_equal(got, tensors(pooled_projector().run()), atol=1e-6)
