"""Schedules: which sites are active and how many reducible tokens leave each.

- `default_schedule`: the space's own decisions, as `deos emit` takes them (fixed `activate`
  and `retain`; learned parameters at their init), each site's keep count taken of the
  tokens that really enter it;
- `load_schedule`: a `plan.json` written by `deos emit` (or by a search), checked against the
  cost's sites: the same space and sites, and the tokens entering each site as planned.
Errors are `ScheduleError`s naming the file and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deos_dsl.compiler.hard_site import plan_site
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.errors import CostError

from .model import Cost, SitePoint

HINT = "pass a plan.json that `deos emit` wrote for this space and model"


class ScheduleError(CostError):
    """A schedule file that cannot be read or does not fit the space."""


def default_schedule(cost: Cost, modules: dict[str, SiteModule]) -> dict[str, SitePoint]:
    """Each site's plan from its module, on the tokens the earlier sites leave it."""
    schedule: dict[str, SitePoint] = {}
    for site in cost.sites:
        entering = cost.evaluate(site.entering, cost.point(schedule))
        plan = plan_site(site.name, modules[site.name], (0, entering))
        schedule[site.name] = SitePoint(plan.active, plan.leaving)
    return schedule


def _site_point(path: Path, entry: dict[str, Any], entering: int) -> SitePoint:
    name = entry["name"]
    span = entry.get("span")
    if isinstance(span, list) and len(span) == 2 and span[1] - span[0] != entering:
        raise ScheduleError(f"{path}: site `{name}` plans {span[1] - span[0]} reducible tokens entering it, "
                            f"the model gives it {entering}", HINT)
    active = entry.get("active")
    if not isinstance(active, bool):
        raise ScheduleError(f"{path}: site `{name}` has no boolean `active`", HINT)
    leaving = entry.get("leaving", entry.get("keep") if active else entering)
    if not isinstance(leaving, int) or isinstance(leaving, bool) or not 0 <= leaving <= entering + 1:
        raise ScheduleError(f"{path}: site `{name}` lets {leaving!r} tokens leave out of {entering}", HINT)
    return SitePoint(active, leaving)


def load_schedule(path: Path, cost: Cost) -> dict[str, SitePoint]:
    """The schedule of `plan.json` at `path`, checked against `cost` (module docstring)."""
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ScheduleError(f"cannot read schedule {path}: {error}", HINT) from None
    entries = plan.get("sites") if isinstance(plan, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in entries):
        raise ScheduleError(f"{path} is not a plan.json: no `sites` list of named sites", HINT)
    if plan.get("model") not in (None, cost.model_name):
        raise ScheduleError(f"{path} is a plan for model `{plan['model']}`, not `{cost.model_name}`",
                            f"pass --model {plan['model']}, or {HINT}")
    if plan.get("space") not in (None, cost.space_name):
        raise ScheduleError(f"{path} is a plan of space `{plan['space']}`, not of `{cost.space_name}`",
                            f"pass --space {plan['space']}, or {HINT}")
    given = {entry["name"]: entry for entry in entries}
    expected = [site.name for site in cost.sites]
    if set(given) != set(expected):
        unknown, missing = sorted(set(given) - set(expected)), [n for n in expected if n not in given]
        raise ScheduleError(f"{path} does not match the space's sites on this model: "
                            + "; ".join(filter(None, [f"unknown {', '.join(unknown)}" if unknown else "",
                                                      f"missing {', '.join(missing)}" if missing else ""])),
                            f"the sites are {', '.join(expected) or 'none'}; {HINT}")
    schedule: dict[str, SitePoint] = {}
    for site in cost.sites:
        entering = cost.evaluate(site.entering, cost.point(schedule))
        schedule[site.name] = _site_point(path, given[site.name], entering)
    return schedule
