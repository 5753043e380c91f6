"""Do searches on different task distributions discover the same operator pattern?

Each run is a finished search directory (its `schedule.json`); runs on the same `--data` are one
GROUP (their policy seeds differ). Two runs are compared site by site:
- `same_active`: the share of sites both open or both closed;
- `token_gap`: the mean over sites of |log2(tokens leaving in one / in the other)|, the token
  curve's distance (0: the same curve; 1: a factor of 2 at every site);
- `same_regime`: the share of the sites open in both whose regime (`pattern.regime_name` of the
  discrete gamma, tau, rho) is the same; `gamma_gap`: the mean |gamma - gamma'| there.
Pairs inside a group measure how far the search's own seeds move the pattern; that is the
yardstick. A pair across groups AGREES when it is no further apart than the furthest pair inside
any group (`same_active` and `same_regime` at least their smallest, `token_gap` at most its
largest). The verdict judges the pattern (which sites reduce, by how much, in which regime);
`gamma_gap` is reported beside it, not judged: gamma is continuous and moves between seeds of
one distribution too. With no pair inside a group (one seed per group), only when the
patterns are identical (every site open or closed alike, the same tokens, the same regimes).
The groups' verdict (`consistent`) judges the MEAN of the pairs across groups, measure by
measure, against the same yardstick: across distributions the patterns are on average no further
apart than two seeds of one distribution. (Every single pair within the furthest seed pair is
a stricter rule whose false alarms grow with the number of pairs; how many pairs pass it is
reported beside the verdict.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from deos_dsl.compiler.sites import short_site
from deos_dsl.errors import StudyError
from deos_dsl.frontend.vocab import MIX, OFF, corner_of
from deos_dsl.search.loop import number
from deos_dsl.search.result import read_run, read_schedule


AGREES, DIFFERS = "agrees", "differs"
AT_LEAST = ("same_active", "same_regime")  # agreement shares: larger is closer
AT_MOST = ("token_gap",)  # distances: smaller is closer (gamma_gap is reported, not judged)
MEASURES = ("same_active", "token_gap", "same_regime", "gamma_gap")
IDENTICAL = {"same_active": 1.0, "token_gap": 0.0, "same_regime": 1.0}  # the yardstick without seeds


@dataclass(frozen=True)
class SiteDecision:
    """One site of a discrete schedule: short name, open or not, tokens leaving it, regime, gamma."""

    site: str
    active: bool
    leaving: int
    regime: str
    gamma: float


@dataclass(frozen=True)
class RunPattern:
    """A finished search's pattern: its directory, data spec (its group), policy seed, what it
    must share with the runs it is compared with (model, budgets) and sites in schedule order."""

    path: Path
    data: str
    seed: int
    setting: tuple[str, tuple[str, ...]]
    sites: tuple[SiteDecision, ...]

    @property
    def label(self) -> str:
        return f"{self.data} seed {self.seed}"


def read_pattern(directory: Path) -> RunPattern:
    """The pattern of the finished search in `directory`; raises `SearchError` (from
    `read_schedule`) when there is none."""
    schedule, _ = read_schedule(directory)
    run = read_run(directory)
    sites = tuple(
        SiteDecision(short_site(site["name"]), bool(site["active"]), int(site["leaving"]),
                     (corner_of({"gamma": site["gamma"], "tau": float(site["tau"]), "rho": site["rho"]}) or MIX)
                     if site["active"] else OFF, float(site["gamma"]))
        for site in schedule["sites"])
    setting = (run.model, tuple(sorted(schedule["targets"])))
    return RunPattern(directory, run.data, int(number(run.space.policy.seed)), setting, sites)  # type: ignore[union-attr]


def distance(a: RunPattern, b: RunPattern) -> dict[str, float]:
    """The four measures of the module docstring for runs over the same sites (NaN where no site
    is open in both: there is no regime to compare)."""
    pairs = list(zip(a.sites, b.sites))
    both = [(x, y) for x, y in pairs if x.active and y.active]
    return {
        "same_active": sum(x.active == y.active for x, y in pairs) / len(pairs),
        "token_gap": sum(abs(math.log2(max(x.leaving, 1) / max(y.leaving, 1))) for x, y in pairs) / len(pairs),
        "same_regime": sum(x.regime == y.regime for x, y in both) / len(both) if both else math.nan,
        "gamma_gap": sum(abs(x.gamma - y.gamma) for x, y in both) / len(both) if both else math.nan,
    }



def _yardstick(inside: list[dict[str, Any]]) -> dict[str, float]:
    """The furthest pair inside the groups, measure by measure (NaN: not measured by any such
    pair); `IDENTICAL` when there is no pair inside a group."""
    if not inside:
        return dict(IDENTICAL)
    furthest = {}
    for key in (*AT_LEAST, *AT_MOST):
        values = [p[key] for p in inside if not math.isnan(p[key])]
        furthest[key] = (min if key in AT_LEAST else max)(values) if values else math.nan
    return furthest


def _agrees(pair: dict[str, Any], yardstick: dict[str, float]) -> bool:
    """`pair` is no further apart than `yardstick` on every measure both have."""
    def within(key: str) -> bool:
        if math.isnan(pair[key]) or math.isnan(yardstick[key]):
            return True
        return pair[key] >= yardstick[key] - 1e-9 if key in AT_LEAST else pair[key] <= yardstick[key] + 1e-9
    return all(within(key) for key in (*AT_LEAST, *AT_MOST))


def _finite(value: Any) -> Any:
    """`value`, with NaN (a measure without sites to measure) as None for JSON."""
    return None if isinstance(value, float) and math.isnan(value) else value


def consistency(runs: list[RunPattern]) -> dict[str, Any]:
    """JSON-ready comparison of `runs` (module docstring): the runs with their sites, every pair
    with its measures (None: not measured) and whether it lies inside a group, the yardstick,
    and per pair across groups its verdict; `across_mean`: the mean of those pairs per measure;
    `consistent`: that mean agrees (module docstring); `pairs_agreeing` of `pairs_across`.
    Raises `StudyError` for fewer than two groups, or runs over other sites, on another model or
    at another budget."""
    groups = list(dict.fromkeys(r.data for r in runs))
    if len(groups) < 2:
        raise StudyError(f"every search given ran on the same data ({groups[0] if groups else 'none given'})",
                         "give searches of one space on at least two --data specs, e.g. embedded{count,compare} "
                         "and embedded{attribute,exist,relation}")
    for run in runs[1:]:
        if run.setting != runs[0].setting or [s.site for s in run.sites] != [s.site for s in runs[0].sites]:
            raise StudyError(f"{run.path} searched other sites, another model or another budget than {runs[0].path} "
                             f"({run.setting} against {runs[0].setting})",
                             "compare searches of one space on one model at one budget")
    pairs = []
    for a, b in combinations(runs, 2):
        pairs.append({"a": a.label, "b": b.label, "inside": a.data == b.data, **distance(a, b)})
    yardstick = _yardstick([p for p in pairs if p["inside"]])
    for pair in pairs:
        if not pair["inside"]:
            pair["verdict"] = AGREES if _agrees(pair, yardstick) else DIFFERS
    across = [p for p in pairs if not p["inside"]]
    across_mean = {key: _mean([p[key] for p in across]) for key in MEASURES}
    return {
        "runs": [{"label": r.label, "path": str(r.path), "data": r.data, "seed": r.seed,
                  "sites": [vars(s) for s in r.sites]} for r in runs],
        "groups": groups,
        "pairs": [{key: _finite(value) for key, value in pair.items()} for pair in pairs],
        "yardstick": {key: _finite(value) for key, value in yardstick.items()},
        "across_mean": {key: _finite(value) for key, value in across_mean.items()},
        "consistent": _agrees(across_mean, yardstick),
        "pairs_agreeing": sum(p["verdict"] == AGREES for p in across), "pairs_across": len(across),
    }


def _mean(values: list[float]) -> float:
    """The mean of the measured (non-NaN) `values`; NaN when none is."""
    measured = [v for v in values if not math.isnan(v)]
    return sum(measured) / len(measured) if measured else math.nan
