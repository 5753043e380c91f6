"""Discretisation of a searched space (DESIGN 1.2): one fixed decision per site that meets
every hard constraint EXACTLY.

1. Gate: on where `p = sigmoid(alpha) > 0.5` (fixed gates stay as written).
2. Keep: the count the relaxed site let through on average, `(1 - E[z] (1 - c)) * entering`
   (`E[z]` its expected relaxed gate at the final temperature, `c` its keep ratio, entering =
   what the DISCRETE sites before it left), rounded to the nearest count the site's `retain`
   allows (`allowed_keeps`: every count of a learned range, the counts of `choices`, the one
   count of a fixed retain). This is the count the constraints measured during the search;
   rounding `c * entering` alone would remove far more than the search paid for whenever a
   gate ended unsaturated (`p = 0.77` counts 77% of a reduction in the budget, the discrete
   gate applies all of it). Without expected gates (`E[z] = 1`) it is DESIGN's `c * entering`.
   This is the ROUNDED schedule (`Schedule.rounded`), reported beside the final one with its
   validation accuracy and `repair_size` (the largest keep change, the gates flipped): with the
   search's deciding phase (`relaxation.py`) the gates end at 0 / 1 and the expected schedule
   within its limits, so repair is a rounding step of a token or two, not a second optimiser.
3. Repair, greedily, until every limit holds on the discrete schedule (`constraints.Limit.met`):
   while an upper limit is violated, lower one site's keep to its next allowed count, choosing
   the move that costs the least estimated task loss per unit of violation removed: the cost of
   dropping `t` tokens at a site is `usefulness * t / entering`, `usefulness` being the search's
   running estimate of `-d objective / d c` there (the least useful tokens go first). Open sites
   are lowered first; a closed learned gate is opened only when no open site can move. Then,
   while a lower limit (`>=`) is violated, raise the keep of the most useful site without
   breaking an upper limit. No move left: `SearchError`.
4. Fill: while some open site can take its next allowed count without breaking an upper
   limit, the most useful one per unit of budget does (slack left by rounding is spent on
   tokens, never on nothing; the limits still hold exactly).
5. Regime: the continuous values are kept; with the policy's `snap` tolerance `s > 0`, a
   LEARNED parameter within `s` of a corner value is snapped to it: gamma / nu to 0 or 1,
   rho / theta to 0, tau to 0 (`tau <= s`) or inf (`1 / tau <= s`).

`Schedule.settings()` gives each site's fixed `ir.SiteSettings` (gate on/off, `retain: K tokens`,
the regime as fixed values), which build the discrete `SiteModule`s for validation and feed
`compile_emitted(..., settings=...)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.site_transfer import bipartite_min_kept
from deos_dsl.compiler.sites import BoundSite
from deos_dsl.errors import SearchError
from deos_dsl.frontend import ir
from deos_dsl.frontend.vocab import SNAP_VALUES, UNIFIED, corner_of
from deos_dsl.ops import keep_count

from .constraints import Constraints, FlowSite, discrete_leaving


def _count(num: ir.Expr, entering: int) -> int:
    assert isinstance(num, ir.Num), "sites must come from a resolved space"
    if num.unit == "tokens":
        return min(int(num.value), entering)
    return keep_count(entering, num.value / 100 if num.unit == "%" else num.value)


def allowed_keeps(retain: ir.Retain, entering: int, bipartite: bool = False) -> list[int]:
    """The keep counts (sorted, unique) `retain` allows when `entering` tokens enter the site;
    a `bipartite` (ToMe) site keeps at least `bipartite_min_kept(entering)`, as `plan_site` does."""
    if isinstance(retain, ir.RetainDrop):
        assert isinstance(retain.amount, ir.Num)
        counts = {max(entering - int(retain.amount.value), 0)}
    elif isinstance(retain, ir.RetainFixed):
        counts = {_count(retain.amount, entering)}
    elif isinstance(retain, ir.RetainChoices):
        counts = {_count(option, entering) for option in retain.options}
    else:
        counts = set(range(_count(retain.lo, entering), _count(retain.hi, entering) + 1))
    floor = bipartite_min_kept(entering) if bipartite else 0
    return sorted({max(count, floor) for count in counts})


def _distance(value: float, target: float) -> float:
    return (0.0 if value == math.inf else 1 / value) if target == math.inf else abs(value - target)


def snap_value(name: str, value: float, tolerance: float) -> float:
    """`value` snapped to a value of parameter `name` in `vocab.SNAP_VALUES` within `tolerance`
    (module docstring)."""
    if tolerance <= 0:
        return value
    return next((target for target in SNAP_VALUES.get(name, ()) if _distance(value, target) <= tolerance), value)


def corner_name(regime: dict[str, float]) -> str:
    """The corner of `vocab.CORNERS` a regime sits on, else `unified`."""
    return corner_of(regime) or UNIFIED


@dataclass(frozen=True)
class Decision:
    """One site's discrete decision: gate, span tokens entering / kept / leaving, regime values."""

    name: str
    active: bool
    gate: float
    entering: int
    keep: int
    leaving: int
    regime: dict[str, float]
    snapped: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "active": self.active, "gate": self.gate, "entering": self.entering,
                                "keep": self.keep, "leaving": self.leaving}
        data.update({k: ("inf" if v == math.inf else v) for k, v in self.regime.items()})
        data.update(corner=corner_name(self.regime), snapped=list(self.snapped))
        return data


@dataclass(frozen=True)
class Schedule:
    """The discrete schedule of every site, the limits' discrete values and the repair moves;
    `rounded`: the schedule before repair and fill (steps 1-2), None for that one itself."""

    decisions: dict[str, Decision]
    values: dict[str, float]
    moves: list[str] = field(default_factory=list)
    rounded: Schedule | None = None

    def settings(self, originals: dict[str, ir.SiteSettings]) -> dict[str, ir.SiteSettings]:
        """Fixed settings per site (`originals[site]` gives its score and operator shape)."""
        fixed = {}
        for name, decision in self.decisions.items():
            original = originals[name]
            assert original.operator is not None
            params = {key: ir.FixedParam(value=ir.Num(value=value)) for key, value in decision.regime.items()}
            fixed[name] = ir.SiteSettings(activate=ir.ActivateFixed(on=decision.active),
                                          retain=ir.RetainFixed(amount=ir.Num(value=float(decision.keep), unit="tokens")),
                                          score=original.score, operator=original.operator.model_copy(update=params))
        return fixed

    def repair_size(self) -> dict[str, Any]:
        """How far repair and fill moved the rounded schedule: the largest keep change of a site
        open in both (tokens, and which site), and the gates they flipped."""
        assert self.rounded is not None, "only a repaired schedule has a rounded one"
        before = self.rounded.decisions
        moved = {name: abs(d.keep - before[name].keep) for name, d in self.decisions.items()
                 if d.active and before[name].active}
        site = max(moved, key=lambda name: moved[name], default=None)
        return {"tokens": moved[site] if site is not None else 0, "site": site,
                "gate_flips": [name for name, d in self.decisions.items() if d.active != before[name].active]}

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"sites": [d.to_json() for d in self.decisions.values()], "constraints": self.values}
        if self.rounded is None:
            return data
        return {**data, "repair": self.moves, "repair_size": self.repair_size(), "rounded": self.rounded.to_json()}


class Discretiser:
    """Steps 1-3 of the module docstring for searched `modules` under `constraints`."""

    def __init__(self, constraints: Constraints, modules: dict[str, SiteModule], retains: dict[str, ir.Retain],
                 usefulness: dict[str, float], expected_gates: dict[str, float] | None = None) -> None:
        self.constraints, self.modules, self.retains = constraints, modules, retains
        self.usefulness = {name: max(usefulness.get(name, 0.0), 0.0) for name in modules}
        with torch.no_grad():
            self.gates = {name: float(m.gate) for name, m in modules.items()}
            self.ratios = {name: float(m.keep) if m.count_mode is None else None for name, m in modules.items()}
        self.expected_gates = {name: (expected_gates or {}).get(name, 1.0) for name in modules}
        self.learned_gate = {name: m.gate_param.learned for name, m in modules.items()}

    def _flow(self, active: dict[str, bool], keep: dict[str, int]) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
        """Counts `(entering, leaving)` per site and the keep each site really takes (its
        requested keep clamped into what its retain allows at its entering count)."""
        taken: dict[str, int] = {}

        def leave(site: FlowSite, entering: int) -> int:
            allowed = allowed_keeps(self.retains[site.name], entering, self.modules[site.name].bipartite)
            wanted = keep.get(site.name, entering)
            taken[site.name] = max((a for a in allowed if a <= wanted), default=allowed[0])
            return discrete_leaving(self.modules[site.name], entering, taken[site.name], active[site.name])

        return self.constraints.flow.through(leave), taken

    def _values(self, counts: dict[str, tuple[int, int]], active: dict[str, bool]) -> list[float]:
        gates = {name: torch.tensor(float(on), dtype=torch.float64) for name, on in active.items()}
        return [float(v) for v in self.constraints.values(counts, gates)]

    def _violation(self, counts: dict[str, tuple[int, int]], active: dict[str, bool], upper: bool) -> float:
        values = self._values(counts, active)
        return sum(max(limit.violation(v), 0.0) for limit, v in zip(self.constraints.limits, values)
                   if limit.upper == upper and not limit.met(v))

    def initial(self) -> tuple[dict[str, bool], dict[str, int]]:
        """Steps 1-2: gates by `p > 0.5`, keeps rounded to the nearest allowed count."""
        active = {name: p > 0.5 for name, p in self.gates.items()}
        keep: dict[str, int] = {}

        def leave(site: FlowSite, entering: int) -> int:
            allowed = allowed_keeps(self.retains[site.name], entering, self.modules[site.name].bipartite)
            ratio = self.ratios[site.name]
            share = 1.0 if ratio is None else 1 - self.expected_gates[site.name] * (1 - ratio)
            wanted = share * entering
            keep[site.name] = min(allowed, key=lambda a: (abs(a - wanted), a))
            return discrete_leaving(self.modules[site.name], entering, keep[site.name], active[site.name])

        self.constraints.flow.through(leave)
        return active, keep

    def _budget(self, counts: dict[str, tuple[int, int]], active: dict[str, bool]) -> float:
        """The upper limits' values relative to their targets, summed (what a fill step spends)."""
        return sum(v / limit.target for limit, v in zip(self.constraints.limits, self._values(counts, active)) if limit.upper)

    def _moves(self, active: dict[str, bool], keep: dict[str, int], mode: str) -> list[tuple[tuple, str, dict, dict]]:
        """Candidate one-step moves `(rank key, label, active', keep')`, best first: `lower` (repair
        of upper limits), `raise` (repair of lower limits) or `fill` (spend the slack)."""
        counts, taken = self._flow(active, keep)
        down = mode == "lower"
        before = self._violation(counts, active, upper=down) if mode != "fill" else self._budget(counts, active)
        candidates = []
        for name in self.modules:
            if not (active[name] or (down and self.learned_gate[name])):
                continue
            entering = counts[name][0]
            current = taken[name] if active[name] else entering
            allowed = allowed_keeps(self.retains[name], entering, self.modules[name].bipartite)
            steps = [a for a in allowed if a < current] if down else [a for a in allowed if a > current]
            if not steps:
                continue
            new = max(steps) if down else min(steps)
            moved_active, moved_keep = {**active, name: True}, {**keep, name: new}
            after_counts, _ = self._flow(moved_active, moved_keep)
            if mode != "lower" and self._violation(after_counts, moved_active, upper=True) > 0:
                continue
            value = self.usefulness[name] * abs(current - new) / max(entering, 1)
            if mode == "fill":
                spent = self._budget(after_counts, moved_active) - before
                key: tuple = (-value / max(spent, 1e-12), spent)
            else:
                gain = before - self._violation(after_counts, moved_active, upper=down)
                if gain <= 0:
                    continue
                key = (not active[name], value / gain if down else -value / gain, -gain)
            candidates.append((key, f"{mode} {name}: keep {current} -> {new}", moved_active, moved_keep))
        return sorted(candidates, key=lambda c: c[0])

    def check_reachable(self, model: str) -> None:
        """Raise `SearchError` when a limit fails even at the space's extreme schedule: for an upper
        limit every learned gate open and every keep at its smallest allowed count, for a lower
        one every learned gate closed and every keep at its largest (before any compute)."""
        for upper in (True, False):
            fixed_on = {name: not self.learned_gate[name] and p > 0.5 for name, p in self.gates.items()}
            active = {name: self.learned_gate[name] or fixed_on[name] if upper else fixed_on[name] for name in self.gates}
            counts, _ = self._flow(active, {name: 0 if upper else 1 << 62 for name in self.gates})
            for limit, value in zip(self.constraints.limits, self._values(counts, active)):
                if limit.upper == upper and not limit.met(value):
                    extreme = "smallest" if upper else "largest"
                    raise SearchError(f"`{limit.label}` is out of reach on model `{model}`: the {extreme} value this "
                                      f"space allows is {limit.show(value)} (target {limit.show(limit.target)})",
                                      "raise the budget, or add sites / widen their retain ranges" if upper else
                                      "lower the bound, or let more sites close")

    def run(self, tolerance: float) -> Schedule:
        """Steps 1-5; raises `SearchError` when no discrete schedule meets every limit. The
        result's `rounded` is the schedule of steps 1-2 alone (before repair and fill)."""
        active, keep = self.initial()
        rounded = self._schedule(active, keep, tolerance, [])
        moves: list[str] = []
        for upper in (True, False):
            while self._violation(self._flow(active, keep)[0], active, upper) > 0:
                candidates = self._moves(active, keep, "lower" if upper else "raise")
                if not candidates:
                    counts = self._flow(active, keep)[0]
                    unmet = [f"`{limit.label}` (at {limit.show(v)})" for limit, v in
                             zip(self.constraints.limits, self._values(counts, active)) if not limit.met(v)]
                    raise SearchError(f"no discrete schedule meets {', '.join(unmet)}: no site's keep can move further",
                                      "loosen the budget or widen the sites' retain ranges")
                _, label, active, keep = candidates[0]
                moves.append(label)
        while candidates := self._moves(active, keep, "fill"):
            _, label, active, keep = candidates[0]
            moves.append(label)
        return replace(self._schedule(active, keep, tolerance, moves), rounded=rounded)

    def _schedule(self, active: dict[str, bool], keep: dict[str, int], tolerance: float, moves: list[str]) -> Schedule:
        """The schedule of gates `active` and requested keeps `keep` (step 5 on its regimes)."""
        counts, taken = self._flow(active, keep)
        values = self._values(counts, active)
        decisions = {}
        for name, module in self.modules.items():
            regime, snapped = {}, []
            with torch.no_grad():
                for key in ("gamma", "tau", "theta", "rho", "nu"):
                    value = float(module.value(key))
                    regime[key] = snap_value(key, value, tolerance) if module.specs[key].learned else value
                    if regime[key] != value:
                        snapped.append(key)
            entering, leaving = counts[name]
            decisions[name] = Decision(name, active[name], self.gates[name], entering,
                                       taken[name] if active[name] else entering, leaving, regime, tuple(snapped))
        return Schedule(decisions, {limit.label: v for limit, v in zip(self.constraints.limits, values)}, moves)


def site_retains(space: ir.Space, sites: list[BoundSite]) -> dict[str, ir.Retain]:
    """`site name -> retain` of the space's bound sites."""
    retains = {}
    for site in sites:
        retain = space.sites[site.site_index].retain
        assert retain is not None, "sites must come from a resolved space"
        retains[site.name] = retain
    return retains

