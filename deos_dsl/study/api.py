"""`deos study`: choose the spaces, run the study, write its files.

`OUT/results.json`, `OUT/comparison.json` and `OUT/table.md` (rewritten after each budget),
`OUT/pareto.png` and `OUT/patterns.png` (at the end), and the search directories
(`OUT/budget-B/search`, `search-seedS`, `ablation-NAME`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from deos_dsl.errors import StudyError
from deos_dsl.files import write_atomically, write_text_atomically
from deos_dsl.frontend import ir
from deos_dsl.search.result import write_json

from .compare import comparison_json
from .fit import is_baseline
from .plots import plot_pareto, plot_patterns
from .report import results_json, table_markdown
from .run import BASELINE, CORNER, RANDOM, Entry, Study, StudyPlan

RESULTS, COMPARISON, TABLE, PARETO, PATTERNS = "results.json", "comparison.json", "table.md", "pareto.png", "patterns.png"


@dataclass(frozen=True)
class StudySpaces:
    """The spaces of a study: the search space, the fixed spaces by kind, the ablations."""

    search: ir.Space
    fixed: dict[str, list[ir.Space]]
    ablations: tuple[ir.Space, ...]


def study_spaces(spaces: list[ir.Space], search_name: str, corners: tuple[str, ...] = (), randoms: tuple[str, ...] = (),
                 ablations: tuple[str, ...] = ()) -> StudySpaces:
    """Classify `spaces` (the first of each name): `search_name` is searched; the spaces named
    in `corners` / `randoms` are fixed rows of that kind, the ones in `ablations` learned variants;
    every other fixed space with sites is a baseline. Raises `StudyError` for an unknown name, a
    search space or ablation that learns nothing, a corner or random row that learns, or no fixed row."""
    unique: dict[str, ir.Space] = {}
    for space in spaces:
        unique.setdefault(space.name, space)
    known = ", ".join(unique)

    def named(name: str, option: str, learned: bool) -> ir.Space:
        if name not in unique:
            raise StudyError(f"no space `{name}` in the given files", f"{option} names one of: {known}")
        if is_baseline(unique[name]) == learned:
            what = "learns nothing: it is a baseline, not a search space" if learned else "learns: it is not a fixed space"
            raise StudyError(f"space `{name}` {what}", f"{option} names a space with learned gates, keeps or regime "
                             "parameters" if learned else f"{option} names a space whose sites are all fixed")
        return unique[name]

    chosen = named(search_name, "--search", True)
    fixed = {CORNER: [named(n, "--corners", False) for n in corners], RANDOM: [named(n, "--random", False) for n in randoms]}
    taken = {search_name, *corners, *randoms, *ablations}
    fixed[BASELINE] = [space for name, space in unique.items() if name not in taken and is_baseline(space)]
    if not any(fixed.values()):
        raise StudyError("the given files hold no baseline (a space whose sites are all fixed)",
                         "pass the baseline spaces too, e.g. spaces/*.deos")
    return StudySpaces(chosen, fixed, tuple(named(n, "--ablations", True) for n in ablations))


def run_study(plan: StudyPlan, console: Console, command: str) -> tuple[list[Entry], list[dict[str, Any]], list[Path]]:
    """Run `plan` (see `run.Study`) and write its files; returns the entries, the comparison
    (`compare.comparison_json`) and the paths written."""
    plan.out.mkdir(parents=True, exist_ok=True)
    meta = {"search_space": plan.search_space.name, "baselines": [s.name for s in plan.baselines],
            "corners": [s.name for s in plan.fixed.get(CORNER, [])], "random": [s.name for s in plan.fixed.get(RANDOM, [])],
            "ablations": [s.name for s in plan.ablations], "seeds": plan.seeds, "warm": plan.warm,
            "ablation_budgets": list(plan.ablation_budgets),
            "budgets": list(plan.budgets), "model": plan.model, "data": plan.data, "examples": plan.examples,
            "steps": plan.options.steps, "batch": plan.options.batch_size, "threads": torch.get_num_threads(),
            "command": command}
    started = time.perf_counter()

    def save(entries: list[Entry]) -> list[dict[str, Any]]:
        meta["seconds"] = round(time.perf_counter() - started, 1)
        comparison = comparison_json(entries)
        write_json(plan.out / RESULTS, results_json(entries, meta, comparison))
        write_json(plan.out / COMPARISON, comparison)
        write_text_atomically(plan.out / TABLE, table_markdown(entries, meta, comparison))
        return comparison

    entries = Study(plan, console).run(save)
    comparison = save(entries)
    paths = [plan.out / RESULTS, plan.out / COMPARISON, plan.out / TABLE]
    for plot, name in ((plot_pareto, PARETO), (plot_patterns, PATTERNS)):
        write_atomically(plan.out / name, lambda temp, plot=plot: plot(entries, temp))
        paths.append(plan.out / name)
    return entries, comparison, paths
