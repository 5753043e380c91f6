"""The two vocabularies users extend most, one table each: operator corners and importance scores.

Everything that spells a corner or a score out reads these tables: the grammar (its keyword
alternatives are generated from them, `parser.grammar`), the IR's literals, regime resolution
and validation, the formatter, the search's discretisation (snap values, corner names), the
study's pattern names and plot colours. The compiler binds each score to its kernel
(`deos_dsl.compiler.site_scores`), the only torch side of it. Plain data: no torch, no IR.

A corner is a named setting of the unified operator `Y = A + gamma softmax(S / tau)^T D`
(DESIGN 1.1): the five regime values it stands for, the settings `NAME(setting: value)` may
still change, the rule that recognises a discrete regime as this corner, and its colour. The
`unified` form is no corner: it takes every setting, from `UNIFIED_VALUES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

INF = math.inf
REGIME = ("gamma", "tau", "theta", "rho", "nu")
UNIFIED = "unified"
UNIFIED_VALUES: Mapping[str, float] = {"gamma": 0.0, "tau": 1.0, "theta": 0.0, "rho": 0.0, "nu": 1.0}

RegimeValues = Mapping[str, float]


@dataclass(frozen=True)
class Corner:
    """A named corner: its keyword and pattern label `name`, all five regime `values` (a value
    whose parameter is among `settings` is a default the user may change), the `settings` that
    `name(...)` accepts, `matches(regime)` (whether a discrete regime sits on this corner; the
    corners are tried in table order) and its `colour` in the study's pattern plot."""

    name: str
    values: RegimeValues
    settings: frozenset[str]
    matches: Callable[[RegimeValues], bool]
    colour: str


CORNERS: dict[str, Corner] = {corner.name: corner for corner in (
    Corner("prune", {"gamma": 0.0, "tau": INF, "theta": 0.0, "rho": 0.0, "nu": 1.0}, frozenset({"theta"}),
           lambda r: r["gamma"] == 0 and r["rho"] == 0, "#d62728"),
    Corner("merge", {"gamma": 1.0, "tau": 0.0, "theta": 0.0, "rho": 0.0, "nu": 1.0},
           frozenset({"theta", "proportional", "into", "affinity"}),
           lambda r: r["gamma"] == 1 and r["rho"] == 0 and r["tau"] == 0, "#1f77b4"),
    Corner("pool", {"gamma": 1.0, "tau": INF, "theta": 0.0, "rho": 0.0, "nu": 1.0},
           frozenset({"window", "width", "proportional", "into", "affinity"}),
           lambda r: r["gamma"] == 1 and r["rho"] == 0 and r["tau"] == INF, "#17becf"),
    Corner("reweight", {"gamma": 0.0, "tau": INF, "theta": 0.0, "rho": 1.0, "nu": 1.0}, frozenset({"theta", "rho"}),
           lambda r: r["gamma"] == 0 and r["rho"] > 0, "#ff7f0e"),
)}

# What a LEARNED regime parameter snaps to when discretised within the user's tolerance: the
# corners' values, and nu = 0 (the unnormalised transfer of EViT's fused and VisionZip's
# contextual tokens). Distances are |value - target|, and 1 / value for the target inf.
SNAP_VALUES: Mapping[str, tuple[float, ...]] = {
    "gamma": (0.0, 1.0), "tau": (0.0, INF), "theta": (0.0,), "rho": (0.0,), "nu": (0.0, 1.0)}

# The study's pattern names beside the corners: an inactive site, and a regime on no corner.
OFF, MIX = "off", "mix"
PATTERN_COLOURS: Mapping[str, str] = {OFF: "#eeeeee", **{c.name: c.colour for c in CORNERS.values()}, MIX: "#2ca02c"}


def corner_of(regime: RegimeValues) -> str | None:
    """The name of the first corner `regime` (gamma, tau, rho at least) sits on, else None."""
    return next((corner.name for corner in CORNERS.values() if corner.matches(regime)), None)


def form_values(form: str) -> RegimeValues:
    """The five regime values an operator `form` (a corner name or `unified`) stands for."""
    return UNIFIED_VALUES if form == UNIFIED else CORNERS[form].values


@dataclass(frozen=True)
class Score:
    """An importance score, written `name` or `name(option: choice)`: `choices` are the values
    its one `option` takes; `attention`: recomputed from the block's attention (the block must
    have one, and an earlier site on the same block gathers it); `learned`: a trainable scorer
    inside the site module (no graph node, not emittable); `grid`: needs the reducible tokens to
    form a square grid; `bipartite`: the choices that split the tokens ToMe's way (alternate
    sources and destinations, at most half of them merged)."""

    name: str
    option: str | None = None
    choices: tuple[str, ...] = ()
    attention: bool = False
    learned: bool = False
    grid: bool = False
    bipartite: tuple[str, ...] = ()

    def text(self, choice: str | None) -> str:
        """How the score is written: `norm`, `attention(query: last)`."""
        return self.name if self.option is None else f"{self.name}({self.option}: {choice})"


SCORES: dict[str, Score] = {score.name: score for score in (
    Score("attention", "query", ("last", "text", "cls", "raters"), attention=True),
    Score("similarity", "to", ("text", "tokens"), bipartite=("tokens",)),
    Score("norm"),
    Score("position", grid=True),
    Score("random"),
    Score("learned", learned=True),
)}
