"""Fitting the bundled baselines to token budgets on the embedded model: every fit keeps
tokens.mean within the budget and is MAXIMAL under the rule (a slightly smaller scale, or a cut
one token larger, is over it), compiles to exactly the counts the fit computed (tokens.mean
recounted from the emitted graph's real lengths), scale 1 is the baseline itself, and the
documented infeasible cases (pool2x2 below 25%) and learned spaces are `StudyError`s."""

from __future__ import annotations

from pathlib import Path

import pytest

from deos_dsl.compiler.models import resolve_model
from deos_dsl.errors import StudyError
from deos_dsl.frontend import ir, load_spaces
from deos_dsl.pipeline import compile_emitted
from deos_dsl.study.fit import Fitted, cut_site, fit_baseline, fixed_tokens_mean, is_baseline, scaled_sites, structure

SPACES = Path(__file__).resolve().parents[2] / "spaces"
FILES = ("fastv", "sparsevlm", "pyramiddrop", "reweight", "pool2x2", "tome", "evit", "visionzip")
BASELINES = {space.name: space for name in FILES for space in load_spaces(SPACES / f"{name}.deos")}
BUDGETS = (0.50, 0.33, 0.22, 0.11, 0.03)
OUT_OF_REACH = {("pool2x2", 0.22), ("pool2x2", 0.11), ("pool2x2", 0.03)}
COMPILED = {("fastv", 0.33), ("fastv", 0.11), ("tome", 0.33), ("tome", 0.03), ("visionzip", 0.11), ("sparsevlm_prune", 0.33),
            ("sparsevlm_prune", 0.11), ("evit", 0.22)}
VISUAL, TEXT, CLS, LAYERS = 144, 12, 1, 4  # the embedded model: visual / question tokens, the vision CLS, decoder depth
EXACT = 1e-12
SMALLER = 1e-6  # a scale this much below the fitted one must be over the budget (bisection tolerance: 1e-9)


@pytest.fixture(scope="module")
def fits() -> dict[tuple[str, float], Fitted | StudyError]:
    loaded, results = resolve_model("embedded"), {}
    for name, space in BASELINES.items():
        for budget in BUDGETS:
            try:
                results[name, budget] = fit_baseline(space, budget, loaded)
            except StudyError as error:
                results[name, budget] = error
    return results


def block_index(site: str) -> tuple[int, int]:
    """`(layer, site index)` of an emitted site name `<role>.layers.<i>@<k>`."""
    path, index = site.split("@")
    return int(path.split(".")[-1]), int(index)


def decoder_input(lengths: dict[str, tuple[int, int]]) -> int:
    """Visual tokens reaching the decoder: what the projector site left, else the last vision
    site minus CLS, else all of them."""
    projector = [s for s in lengths if s.startswith("projector")]
    if projector:
        return lengths[projector[-1]][1]
    vision = sorted((s for s in lengths if s.startswith("vision.")), key=block_index)
    return lengths[vision[-1]][1] - CLS if vision else VISUAL


def emitted_tokens_mean(space: ir.Space) -> float:
    """tokens.mean recounted from the emitted graph's real lengths: the visual tokens entering
    each decoder layer (the decoder's input, then what the last decoder site at an earlier layer
    left minus the question tokens), averaged, over 144."""
    lengths = compile_emitted(space, resolve_model("embedded")).lengths
    decoder = sorted((s for s in lengths if s.startswith("decoder.")), key=block_index)
    per_layer = []
    for layer in range(LAYERS):
        before = [s for s in decoder if block_index(s)[0] < layer]
        per_layer.append(lengths[before[-1]][1] - TEXT if before else decoder_input(lengths))
    return sum(per_layer) / (LAYERS * VISUAL)


@pytest.mark.parametrize("name", list(BASELINES))
def test_each_fit_is_within_the_budget_and_maximal(name: str, fits: dict) -> None:
    space, loaded = BASELINES[name], resolve_model("embedded")
    own = structure(space, loaded)
    assert scaled_sites(space, 1.0) == space.sites  # scale 1 is the baseline itself, and so is its rewrite
    assert own.tokens_mean(scaled_sites(space, 1.0 + 1e-12)) == own.tokens_mean(space.sites)
    unscaled = scaled_sites(space, 0.0) == space.sites
    with_cut = None
    for budget in BUDGETS:
        fitted = fits[name, budget]
        if (name, budget) in OUT_OF_REACH:
            assert isinstance(fitted, StudyError) and "smallest it reaches is 25%" in fitted.message
            continue
        assert isinstance(fitted, Fitted) and fitted.space.name == name and fitted.budget == budget
        assert fitted.tokens_mean <= budget * (1 + EXACT)
        if fitted.cut is None:
            assert own.tokens_mean(fitted.space.sites) == fitted.tokens_mean
            assert unscaled or own.tokens_mean(scaled_sites(space, fitted.scale - SMALLER)) > budget
            continue
        assert own.tokens_mean(scaled_sites(space, 1e3)) > budget  # scaling alone cannot reach it
        assert fitted.space.sites[1:] == space.sites and fitted.describe().endswith(f"cut to {fitted.cut} tokens")
        with_cut = with_cut or structure(fitted.space, loaded)  # one structure for every cut count
        assert with_cut.tokens_mean(fitted.space.sites) == fitted.tokens_mean
        assert with_cut.tokens_mean([cut_site(fitted.cut + 1), *space.sites]) > budget


@pytest.mark.parametrize("name, budget", sorted(COMPILED))
def test_the_fitted_space_compiles_to_the_counts_the_fit_computed(name: str, budget: float, fits: dict) -> None:
    fitted = fits[name, budget]
    assert emitted_tokens_mean(fitted.space) == pytest.approx(fitted.tokens_mean, abs=1e-12)


def test_the_discrete_tokens_mean_of_a_fixed_space() -> None:
    assert fixed_tokens_mean(BASELINES["tome"], resolve_model("embedded")) == (VISUAL - 4 * 16) / VISUAL


def test_the_knob_scales_ratios_and_drops_but_not_counts_windows_or_full_keeps() -> None:
    (fastv,), (tome,) = scaled_sites(BASELINES["fastv"], 2.0), scaled_sites(BASELINES["tome"], 1.5)
    assert fastv.retain == ir.RetainFixed(amount=ir.Num(value=25.0, unit="%"))
    assert tome.retain == ir.RetainDrop(amount=ir.Num(value=24.0, unit="tokens"))
    for name in ("pool2x2", "reweight"):
        assert scaled_sites(BASELINES[name], 3.0) == BASELINES[name].sites
    assert Fitted(BASELINES["fastv"], 0.5, 0.4, 1.7312, None).describe() == "own ratios ^1.73"
    assert Fitted(BASELINES["fastv"], 0.5, 0.4, 1.0, 40).describe() == "own ratios + projector cut to 40 tokens"


def test_a_learned_space_is_searched_not_fitted() -> None:
    (eos,) = [space for space in load_spaces(SPACES / "eos.deos") if space.name == "eos"]
    loaded, message = resolve_model("embedded"), "`eos` learns its schedule: search it, do not fit it"
    with pytest.raises(StudyError, match=message):
        fit_baseline(eos, 0.25, loaded)
    with pytest.raises(StudyError, match=message):
        fixed_tokens_mean(eos, loaded)
    assert not is_baseline(eos) and all(is_baseline(space) for space in BASELINES.values())
