"""Every bundled space parses, validates, is canonical, round-trips and means what it says."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from deos_dsl.frontend import ir
from deos_dsl.frontend.api import check, format_text, load_spaces, loads, parse
from deos_dsl.frontend.formatter import format_module, format_spaces
from deos_dsl.frontend.regime import regime

SPACES = Path(__file__).resolve().parents[2] / "spaces"
FILES = sorted(SPACES.glob("*.deos"))
BASELINES = {"fastv": "FastV", "sparsevlm": "SparseVLM", "pyramiddrop": "PyramidDrop", "tome": "ToMe",
             "evit": "EViT", "visionzip": "VisionZip", "pool2x2": "pooling", "reweight": "reweighting"}


def by_name(file: str) -> dict[str, ir.Space]:
    return {s.name: s for s in load_spaces(SPACES / file)}


def test_every_baseline_and_eos_is_bundled():
    names = {f.stem for f in FILES}
    assert set(BASELINES) | {"eos", "common"} <= names


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_space_file_is_valid_canonical_and_round_trips(path: Path):
    text = path.read_text()
    spaces, diagnostics = check(path)
    assert diagnostics == [] and spaces
    assert format_text(text, str(path)) == text, "bundled spaces are in canonical form"
    module = parse(text, str(path))
    assert parse(format_module(module), str(path)) == module
    assert ir.Module.model_validate_json(module.model_dump_json()) == module
    for space in spaces:
        again = ir.Space.model_validate_json(space.model_dump_json())
        assert again == space and again.span == space.span
    assert loads(format_spaces(spaces), str(path)) == spaces


@pytest.mark.parametrize("stem", sorted(BASELINES))
def test_baseline_header_names_its_published_method(stem: str):
    header = (SPACES / f"{stem}.deos").read_text().split("\n\n")[0]
    assert header.startswith("# ") and BASELINES[stem].lower() in header.lower()


def test_fastv_prunes_half_before_layer_two_by_layer_one_attention():
    """FastV's release ranks by the previous layer's attention before layer K = 2: the output of
    layer 1, scored by its own attention."""
    (site,) = by_name("fastv.deos")["fastv"].sites
    assert ir.RoleSelector(path=["decoder", "layers"], index=ir.Index(items=[ir.Point(at=ir.Num(value=1))])) == site.selectors[0]
    assert site.retain == ir.RetainFixed(amount=ir.Num(value=0.5))
    assert site.score == ir.Score(kind="attention", option="last")
    assert regime(site.operator)["gamma"].value.value == 0


def test_sparsevlm_inherits_sites_and_recycles():
    spaces = by_name("sparsevlm.deos")
    recycling, pruning = spaces["sparsevlm"], spaces["sparsevlm_prune"]
    assert [s.selectors for s in recycling.sites] == [s.selectors for s in pruning.sites] and len(recycling.sites) == 3
    assert all(s.operator.form == "prune" for s in pruning.sites)
    assert all(s.operator.form == "unified" and s.operator.recycle.value == 30 for s in recycling.sites)
    assert [s.retain.amount.value for s in recycling.sites] == [55, 60, 50]
    assert all(s.score == ir.Score(kind="attention", option="raters") for s in recycling.sites + pruning.sites)


def test_pyramiddrop_keeps_lambda_per_stage_at_quarter_depths():
    sites = by_name("pyramiddrop.deos")["pyramiddrop"].sites
    assert [s.selectors[0].index.items[0].at for s in sites] == [ir.Num(value=v, unit="%") for v in (25, 50, 75)]
    assert all(s.position == "before" for s in sites)  # ranked by the next stage's first layer
    assert all(s.retain.amount.value == 0.5 for s in sites)


def test_tome_evit_visionzip_pool_reweight_corners():
    tome = by_name("tome.deos")["tome"].sites[0]
    assert tome.retain == ir.RetainDrop(amount=ir.Num(value=16, unit="tokens"))
    assert tome.operator.form == "merge" and tome.operator.proportional is True
    assert regime(tome.operator)["tau"].value.value == 0
    evit = by_name("evit.deos")["evit"].sites[0]
    assert math.isinf(evit.operator.tau.value.value) and evit.operator.into == ir.IntoExtra(count=ir.Num(value=1))
    assert tome.position == evit.position == "mid"  # between attention and MLP, as both publish
    visionzip = by_name("visionzip.deos")["visionzip"].sites[0]
    assert visionzip.retain.amount.value == pytest.approx(9.375) and visionzip.operator.into.count.value == 10
    zip_regime = regime(visionzip.operator)  # target + mean(assigned): a hard assignment, unnormalised
    assert (zip_regime["gamma"].value.value, zip_regime["tau"].value.value, zip_regime["nu"].value.value) == (1, 0, 0)
    pool = by_name("pool2x2.deos")["pool2x2"].sites[0]
    assert pool.operator.window == (2, 2) and pool.selectors[0] == ir.RoleSelector(path=["projector"])
    reweight = regime(by_name("reweight.deos")["reweight"].sites[0].operator)
    assert reweight["gamma"].value.value == 0 and reweight["rho"].value.value == 0.5


def test_eos_budgets_inherit_and_override():
    spaces = by_name("eos.deos")
    eos, eos_64 = spaces["eos"], spaces["eos_64"]
    assert eos_64.sites == eos.sites and len(eos.sites) == 2
    budgets = {c.quantity: c.bound for c in eos_64.constraints}
    assert budgets["tokens.mean"].unit == "%" and budgets["tokens.mean"].value == pytest.approx(64 / 576 * 100)
    assert budgets["flops"] == ir.Num(value=0.25, unit="dense")
    projector, decoder = eos.sites
    assert projector.score == ir.Score(kind="norm") and decoder.score == ir.Score(kind="attention", option="text")
    assert isinstance(decoder.activate, ir.ActivateLearned) and decoder.operator.tau.scale == "log"
    assert eos.objective.align.value == 0.1 and eos.policy.relaxation == "hard_concrete"
