"""`deos study`: choose the spaces, run the study, write its files.

`OUT/results.json` and `OUT/table.md` (rewritten after each budget), `OUT/pareto.png` and
`OUT/patterns.png` (at the end), and one search directory per budget (`OUT/budget-B/search`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from deos_dsl.errors import StudyError
from deos_dsl.files import write_atomically, write_text_atomically
from deos_dsl.frontend import ir
from deos_dsl.search.result import write_json

from .fit import is_baseline
from .plots import plot_pareto, plot_patterns
from .report import results_json, table_markdown
from .run import Entry, Study, StudyPlan

RESULTS, TABLE, PARETO, PATTERNS = "results.json", "table.md", "pareto.png", "patterns.png"


def study_spaces(spaces: list[ir.Space], search_name: str) -> tuple[ir.Space, list[ir.Space]]:
    """The space named `search_name` and the baselines among `spaces` (fixed, with sites; the
    first of each name); raises `StudyError` for an unknown name or a search space that learns nothing."""
    unique = list({space.name: space for space in reversed(spaces)}.values())[::-1]
    chosen = next((space for space in unique if space.name == search_name), None)
    if chosen is None:
        raise StudyError(f"no space `{search_name}` in the given files",
                         f"--search names one of: {', '.join(s.name for s in unique)}")
    if is_baseline(chosen):
        raise StudyError(f"space `{search_name}` learns nothing: it is a baseline, not a search space",
                         "--search names a space with learned gates, keeps or regime parameters")
    baselines = [space for space in unique if space is not chosen and is_baseline(space)]
    if not baselines:
        raise StudyError("the given files hold no baseline (a space whose sites are all fixed)",
                         "pass the baseline spaces too, e.g. spaces/*.deos")
    return chosen, baselines


def run_study(plan: StudyPlan, console: Console, command: str) -> tuple[list[Entry], list[Path]]:
    """Run `plan` (see `run.Study`) and write its files; returns the entries and the paths written."""
    plan.out.mkdir(parents=True, exist_ok=True)
    meta = {"search_space": plan.search_space.name, "baselines": [s.name for s in plan.baselines],
            "budgets": list(plan.budgets), "model": plan.model, "data": plan.data, "examples": plan.examples,
            "steps": plan.options.steps, "batch": plan.options.batch_size, "threads": torch.get_num_threads(),
            "command": command}
    started = time.perf_counter()

    def save(entries: list[Entry]) -> None:
        meta["seconds"] = round(time.perf_counter() - started, 1)
        write_json(plan.out / RESULTS, results_json(entries, meta))
        write_text_atomically(plan.out / TABLE, table_markdown(entries, meta))

    entries = Study(plan, console).run(save)
    save(entries)
    paths = [plan.out / RESULTS, plan.out / TABLE]
    for plot, name in ((plot_pareto, PARETO), (plot_patterns, PATTERNS)):
        write_atomically(plan.out / name, lambda temp, plot=plot: plot(entries, temp))
        paths.append(plan.out / name)
    return entries, paths
