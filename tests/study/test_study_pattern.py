"""Operator patterns: regime names per corner, hybrid detection, the one-line text."""

from __future__ import annotations

import math

import pytest

from deos_dsl.compiler.hard_site import SitePlan
from deos_dsl.study.pattern import is_hybrid, pattern_text, regime_name, short_site, site_pattern


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
