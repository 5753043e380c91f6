"""Discretisation: gates by p > 0.5, keeps rounded to what `retain` allows, then repaired until
EVERY limit holds exactly on the discrete schedule (property-tested), the least useful tokens
first; regime values kept, snapped to a corner only within the tolerance; fixed settings that
rebuild the same decisions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deos_dsl.compiler.hard_site import plan_site
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.errors import SearchError
from deos_dsl.frontend import ir
from deos_dsl.search.constraints import Constraints, FlowSite, Limit, TokenFlow
from deos_dsl.search.discretise import Discretiser, allowed_keeps, corner_name, snap_value

N, LAYERS = 48, 4
CHAIN = "decoder.layers"
NAMES = ("projector@0", "decoder.layers.0@1", "decoder.layers.1@1", "decoder.layers.2@1")


def pct(value: float) -> ir.Num:
    return ir.Num(value=value, unit="%")


def learned_settings(lo: float = 5.0, gamma: ir.Param | None = None) -> ir.SiteSettings:
    return ir.SiteSettings(
        activate=ir.ActivateLearned(init=ir.Num(value=0.5)),
        retain=ir.RetainLearned(lo=pct(lo), hi=pct(100), init=pct(50)),
        score=ir.Score(kind="norm"),
        operator=ir.Operator(form="unified", gamma=gamma or ir.LearnedParam(lo=ir.Num(value=0), hi=ir.Num(value=1),
                                                                             init=ir.Num(value=0.1)),
                             tau=ir.LearnedParam(scale="log", lo=ir.Num(value=0.001), hi=ir.Num(value=1000),
                                                 init=ir.Num(value=0.5))))


def build(alphas: list[float], betas: list[float], limits: list[Limit], lo: float = 5.0,
          usefulness: list[float] | None = None) -> Discretiser:
    flow = TokenFlow([FlowSite(name, CHAIN, layer, N) for name, layer in zip(NAMES, (-1, 0, 1, 2))], CHAIN, LAYERS, N)
    modules, retains = {}, {}
    for name, alpha, beta in zip(NAMES, alphas, betas):
        site = learned_settings(lo)
        modules[name] = SiteModule(name, site, (0, N), 8)
        with torch.no_grad():
            modules[name].alpha.fill_(alpha)
            modules[name].beta.fill_(beta)
        retains[name] = site.retain
    useful = dict(zip(NAMES, usefulness or [1.0] * len(NAMES)))
    return Discretiser(Constraints(flow, limits), modules, retains, useful)


def tokens_mean(decisions: dict) -> float:
    """Independent count: the share entering each of the LAYERS layers, averaged."""
    left, shares = N, []
    layer_sites = {-1: NAMES[0], 0: NAMES[1], 1: NAMES[2], 2: NAMES[3]}
    for layer in range(LAYERS):
        site = decisions[layer_sites[layer - 1]]
        left = site.keep if site.active else left
        shares.append(left / N)
    return sum(shares) / LAYERS


def mean_limit(target: float) -> Limit:
    return Limit(f"tokens.mean <= {target}", "tokens.mean", True, target, CHAIN)


@settings(max_examples=60, deadline=None)
@given(alphas=st.lists(st.floats(-4, 4), min_size=4, max_size=4), betas=st.lists(st.floats(-4, 4), min_size=4, max_size=4),
       useful=st.lists(st.floats(0, 10), min_size=4, max_size=4), target=st.floats(0.02, 1.0), lo=st.sampled_from([5.0, 30.0]))
def test_the_discrete_schedule_meets_the_budget_exactly_or_the_budget_is_out_of_reach(alphas, betas, useful, target, lo):
    discretiser = build(alphas, betas, [mean_limit(target)], lo, useful)
    try:
        discretiser.check_reachable("test")
    except SearchError:
        with pytest.raises(SearchError, match="no discrete schedule meets"):
            discretiser.run(0.0)
        return
    schedule = discretiser.run(0.0)
    decisions = schedule.decisions
    assert tokens_mean(decisions) <= target + 1e-12
    assert schedule.values["tokens.mean <= " + str(target)] == pytest.approx(tokens_mean(decisions))
    for name, alpha in zip(NAMES, alphas):
        d = decisions[name]
        assert d.keep in allowed_keeps(discretiser.retains[name], d.entering)
        if torch.sigmoid(torch.tensor(alpha)) > 0.5:
            assert d.active  # the repair never closes a gate
    assert schedule.rounded is not None and schedule.rounded.moves == []
    if not schedule.moves:  # no repair: the rounding of the relaxed counts (of the open sites)
        assert schedule.rounded.decisions == decisions and schedule.repair_size()["tokens"] == 0
        for name in NAMES:
            d = decisions[name]
            if not d.active:
                assert d.keep == d.leaving == d.entering
                continue
            c = float(discretiser.modules[name].keep.detach())
            allowed = allowed_keeps(discretiser.retains[name], d.entering)
            assert d.keep == min(allowed, key=lambda a: (abs(a - c * d.entering), a))


def test_repair_lowers_the_least_useful_site_first_and_stops_at_the_budget():
    # gates open, c = 0.525: keeps 25, 13, 7, 4: mean (25 + 13 + 7 + 4) / 192 = 25.5% > 20%
    discretiser = build([3.0] * 4, [0.0] * 4, [mean_limit(0.20)], usefulness=[0.0, 5.0, 5.0, 5.0])
    schedule = discretiser.run(0.0)
    keeps = [schedule.decisions[name].keep for name in NAMES]
    assert keeps == [14, 13, 7, 4]  # only the useless projector pays, down to the first count within budget
    assert schedule.moves == [f"lower {NAMES[0]}: keep {k} -> {k - 1}" for k in range(25, 14, -1)]  # no fill fits
    assert tokens_mean(schedule.decisions) == pytest.approx(38 / 192) and 38 / 192 <= 0.20 < 39 / 192
    assert schedule.rounded is not None and [schedule.rounded.decisions[name].keep for name in NAMES] == [25, 13, 7, 4]
    assert schedule.rounded.values["tokens.mean <= 0.2"] == pytest.approx(49 / 192)  # what the search ended at
    assert schedule.repair_size() == {"tokens": 11, "site": NAMES[0], "gate_flips": []}
    reported = schedule.to_json()
    assert reported["repair_size"]["tokens"] == 11 and len(reported["repair"]) == 11
    assert [s["keep"] for s in reported["rounded"]["sites"]] == [25, 13, 7, 4] and "rounded" not in reported["rounded"]
    useful_projector = build([3.0] * 4, [0.0] * 4, [mean_limit(0.20)], usefulness=[9.0, 0.1, 9.0, 9.0]).run(0.0)
    lowered = {move.split(":")[0] for move in useful_projector.moves if move.startswith("lower")}
    assert lowered == {f"lower {NAMES[1]}"}  # now layer 0 pays (and the slack it leaves may be filled)
    assert tokens_mean(useful_projector.decisions) <= 0.20


def test_slack_is_filled_by_the_most_useful_open_site_within_the_budget():
    # layer 2 closed: layers see 25, 13, 7, 7 (52 / 192 = 27.1%) under a 30% budget (57.6 / 192)
    discretiser = build([3.0, 3.0, 3.0, -3.0], [0.0] * 4, [mean_limit(0.30)], usefulness=[1.0, 1.0, 9.0, 1.0])
    schedule = discretiser.run(0.0)
    # layer 1 (most useful) takes +2 per token (layers 2 and 3 see it) while it fits, then one more fits at layer 0
    assert schedule.moves == [f"fill {NAMES[2]}: keep 7 -> 8", f"fill {NAMES[2]}: keep 8 -> 9",
                              f"fill {NAMES[1]}: keep 13 -> 14"]
    assert tokens_mean(schedule.decisions) == pytest.approx(57 / 192) and 57 / 192 <= 0.30 < 58 / 192
    assert not schedule.decisions[NAMES[3]].active  # closed sites stay closed


def test_open_sites_keep_what_their_relaxed_form_let_through_on_average():
    # E[z] = 0.5 at every site: share 1 - 0.5 * (1 - 0.525) = 0.7625 instead of c = 0.525
    discretiser = build([3.0] * 4, [0.0] * 4, [mean_limit(1.0)], usefulness=[0.0] * 4)
    discretiser.expected_gates = dict.fromkeys(NAMES, 0.5)
    active, keep = discretiser.initial()
    assert all(active.values()) and keep[NAMES[0]] == round(0.7625 * 48) == 37


def test_closed_gates_open_only_when_open_sites_cannot_move():
    discretiser = build([3.0, -3.0, -3.0, -3.0], [-8.0] * 4, [mean_limit(0.10)], lo=25.0)
    # projector open at its floor 25% (12 tokens): mean 25% > 10%: a closed site must open
    schedule = discretiser.run(0.0)
    assert tokens_mean(schedule.decisions) <= 0.10
    assert sum(d.active for d in schedule.decisions.values()) > 1
    opened = [name for name, d in schedule.decisions.items() if d.active and name != NAMES[0]]
    assert schedule.repair_size()["gate_flips"] == opened  # reported: repair opened gates the search closed


def test_lower_bound_raises_keeps_without_breaking_the_upper_bound():
    lower = Limit("tokens.mean >= 0.3", "tokens.mean", False, 0.30, CHAIN)
    discretiser = build([3.0] * 4, [-3.0] * 4, [mean_limit(0.35), lower])
    schedule = discretiser.run(0.0)
    assert 0.30 <= tokens_mean(schedule.decisions) <= 0.35


def test_unreachable_budget_is_reported_before_any_search():
    discretiser = build([0.0] * 4, [0.0] * 4, [mean_limit(0.2)], lo=50.0)  # floor: (24 + 12 + 6 + 3) / 192 = 23.4%
    with pytest.raises(SearchError, match=r"out of reach .* smallest value this space allows is 23.44% "):
        discretiser.check_reachable("embedded")


def test_snapping_within_the_tolerance_only():
    assert snap_value("gamma", 0.015, 0.02) == 0.0 and snap_value("gamma", 0.985, 0.02) == 1.0
    assert snap_value("gamma", 0.05, 0.02) == 0.05 and snap_value("gamma", 0.015, 0.0) == 0.015
    assert snap_value("tau", 0.01, 0.02) == 0.0 and snap_value("tau", 80.0, 0.02) == math.inf
    assert snap_value("tau", 0.22, 0.02) == 0.22 and snap_value("rho", 0.01, 0.02) == 0.0
    assert corner_name({"gamma": 0.0, "tau": 0.22, "rho": 0.0}) == "prune"
    assert corner_name({"gamma": 1.0, "tau": 0.0, "rho": 0.0}) == "merge"
    assert corner_name({"gamma": 0.08, "tau": 0.22, "rho": 0.0}) == "unified"


def test_learned_values_snap_fixed_values_stay_and_settings_rebuild_the_decisions():
    fixed_gamma = ir.FixedParam(value=ir.Num(value=0.01))
    discretiser = build([3.0] * 4, [0.0] * 4, [mean_limit(0.9)])
    site = learned_settings(gamma=fixed_gamma)
    discretiser.modules[NAMES[0]] = SiteModule(NAMES[0], site, (0, N), 8)
    with torch.no_grad():
        discretiser.modules[NAMES[0]].alpha.fill_(3.0)
        discretiser.gates[NAMES[0]] = float(discretiser.modules[NAMES[0]].gate)
        discretiser.modules[NAMES[1]].gamma.fill_(-9.0)  # gamma ~ 1.2e-4: snaps to 0
        discretiser.modules[NAMES[1]].tau.fill_(math.log(0.005))  # tau 0.005: snaps to 0 (sharp)
    schedule = discretiser.run(0.02)
    first, second = schedule.decisions[NAMES[0]], schedule.decisions[NAMES[1]]
    assert first.regime["gamma"] == pytest.approx(0.01) and "gamma" not in first.snapped
    assert second.regime["gamma"] == 0.0 and second.regime["tau"] == 0.0 and {"gamma", "tau"} <= set(second.snapped)
    fixed = schedule.settings({name: learned_settings() for name in NAMES})
    for name, decision in schedule.decisions.items():
        module = SiteModule(name, fixed[name], (0, N), 8)
        plan = plan_site(name, module, (0, decision.entering))
        assert (plan.active, plan.keep) == (decision.active, decision.keep)
        assert (plan.gamma, plan.tau) == pytest.approx((decision.regime["gamma"], decision.regime["tau"]))  # float32
        assert not any(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("entering", [16, 11, 40])
def test_a_bipartite_sites_allowed_keeps_are_what_the_emitted_plan_keeps(entering: int):
    """ToMe's cap (at most half the span merges) binds the search's discrete counts as it binds
    `plan_site`, so a searched schedule emits the counts it was budgeted with."""
    retain = ir.RetainDrop(amount=ir.Num(value=16, unit="tokens"))
    module = SiteModule("tome", ir.SiteSettings(activate=ir.ActivateFixed(on=True), retain=retain,
                                                score=ir.Score(kind="similarity", option="tokens"), operator=ir.Operator(form="merge")),
                        (1, 1 + entering), 8)
    assert module.bipartite
    (keep,) = allowed_keeps(retain, entering, bipartite=True)
    assert keep == plan_site("tome", module, (1, 1 + entering)).keep == max(entering - 16, entering - entering // 2)
    assert allowed_keeps(retain, entering) == [max(entering - 16, 0)]  # a prune has no such cap
