"""Operator patterns: regime names per corner, hybrid detection, the one-line text."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from deos_dsl.compiler.hard_site import SitePlan, plan_site
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.frontend import load_spaces
from deos_dsl.compiler.sites import short_site
from deos_dsl.study.pattern import is_hybrid, pattern_text, regime_name, site_pattern


SPACES = Path(__file__).resolve().parents[2] / "spaces"


def plan(name: str = "decoder.layers.2@0", active: bool = True, gamma: float = 0.0, tau: float = 1.0,
         rho: float = 0.0, keep: int = 36) -> SitePlan:
    return SitePlan(name=name, active=active, gate=1.0, span=(0, 144), keep=keep, gamma=gamma, tau=tau, theta=None,
                    rho=rho, nu=1.0, proportional=False, locality=None)


@pytest.mark.parametrize(("gamma", "tau", "rho", "regime"), [
    (0.0, 1.0, 0.0, "prune"), (0.0, 1.0, 0.5, "reweight"), (1.0, 0.0, 0.0, "merge"),
    (1.0, math.inf, 0.0, "pool"), (0.6, 0.3, 0.0, "mix"), (1.0, 0.3, 0.0, "mix")])
def test_regime_names_follow_the_corners(gamma: float, tau: float, rho: float, regime: str) -> None:
    assert regime_name(plan(gamma=gamma, tau=tau, rho=rho)) == regime


def test_short_site_names() -> None:
    assert [short_site(n) for n in ("decoder.layers.12@0", "vision.layers.1@2", "projector@0")] == ["D12", "V1", "P"]
    hf = ("model.language_model.layers.3@1", "model.vision_tower.vision_model.encoder.layers.11@0", "model.multi_modal_projector@0")
    assert [short_site(n) for n in hf] == ["D3", "V11", "P"] and short_site("model.norm@0") == "model.norm"


def test_hybrid_needs_an_active_soft_transfer() -> None:
    assert is_hybrid({"a": plan(gamma=0.4), "b": plan(gamma=0.0)})
    assert not is_hybrid({"a": plan(gamma=1.0, tau=0.0), "b": plan(gamma=0.0)})  # merge + prune: corners only
    assert not is_hybrid({"a": plan(gamma=0.4, active=False)})


def test_pattern_text_lists_active_sites_with_their_tokens() -> None:
    sites = [site_pattern(plan("projector@0", gamma=0.58, tau=0.2, keep=72)),
             site_pattern(plan("decoder.layers.0@1", active=False)),
             site_pattern(plan("decoder.layers.1@1", keep=18))]
    assert pattern_text(sites) == "P mix(g=0.58) 72/144 · D1 prune 18/144"
    assert pattern_text([site_pattern(plan(active=False))]) == "-"


# each bundled baseline's label under the corner rule: what its space writes, named by its regime
BASELINE_LABELS = {"fastv": "prune", "pyramiddrop": "prune", "sparsevlm_prune": "prune", "sparsevlm": "mix",
                   "tome": "merge", "evit": "pool", "visionzip": "merge", "pool2x2": "pool", "reweight": "reweight"}


@pytest.mark.parametrize("name", sorted(BASELINE_LABELS))
def test_each_baseline_schedule_is_labelled_by_its_own_regime(name: str) -> None:
    """The study labels a schedule by the corner of each site's regime: every site of a baseline
    gets its space's own corner (EViT's fusion into one token is `pool`: gamma 1, tau inf;
    SparseVLM v1's sharp recycling, tau 0.05, is off the corners: `mix`)."""
    space = next(s for f in sorted(SPACES.glob("*.deos")) for s in load_spaces(f) if s.name == name)
    for index, settings in enumerate(space.sites):
        plan_ = plan_site(f"site@{index}", SiteModule(f"site@{index}", settings, (0, 144), 128), (0, 144))
        assert plan_.active and regime_name(plan_) == BASELINE_LABELS[name]
