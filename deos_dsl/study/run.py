"""The baseline study: the search space and every hand-designed baseline at each token budget.

For each budget `B` (a share of the visual tokens, layer-averaged as `tokens.mean`):
- the search space runs with its constraints replaced by `tokens.mean <= B` (`deos search`
  into `OUT/budget-B/search`; a finished search there with the same arguments is reused, an
  unfinished one resumed), and its discrete schedule is compiled;
- every baseline is fitted to `B` (`fit.fit_baseline`: its own trade-off knob, a projector
  cut where that cannot reach `B`) and compiled; a baseline that cannot meet `B` is a row
  with the reason instead of numbers.
Every schedule is then measured the same way on its EMITTED graph (tokens really dropped):
accuracy on the fixed test subset, FLOPs of one example counted by `FlopCounterMode`, and the
operator pattern (`pattern.py`). The dense model is measured once. `results.json` is rewritten
(atomically) after every budget, so an interrupted study keeps what it measured.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from torch import nn

from deos_dsl.compiler.models import LoadedModel, resolve_model
from deos_dsl.data import Encoded
from deos_dsl.errors import DeosError, StudyError
from deos_dsl.frontend import ir
from deos_dsl.measure import Subject, accuracy_and_flops, load_searched
from deos_dsl.pipeline.emit import Emitted, compile_emitted
from deos_dsl.search.loop import Options, search
from deos_dsl.search.result import SCHEDULE, read_run
from deos_dsl.tasks import make_task

from .fit import fit_baseline
from .pattern import is_hybrid, pattern_text, site_pattern

SEARCH, DENSE, BASELINE = "search", "dense", "baseline"


@dataclass
class Entry:
    """One row of the study: a schedule at a budget (None: the dense model) and what it measured;
    `setting` says how it was obtained, `error` why there are no numbers."""

    method: str
    kind: str
    budget: float | None
    tokens_mean: float | None = None
    gflops: float | None = None
    accuracy: dict[str, float] | None = None
    sites: list[dict[str, Any]] = field(default_factory=list)
    hybrid: bool = False
    setting: str = ""
    seconds: float = 0.0
    error: str | None = None

    @property
    def pattern(self) -> str:
        return pattern_text(self.sites)

    def to_json(self) -> dict[str, Any]:
        return dict(asdict(self), pattern=self.pattern)


@dataclass(frozen=True)
class StudyPlan:
    """What to run: `search_space` (learned) and `baselines` (fixed) at `budgets` (shares)."""

    search_space: ir.Space
    baselines: list[ir.Space]
    budgets: tuple[float, ...]
    model: str
    data: str
    out: Path
    options: Options
    examples: int = 1000


def budget_label(budget: float) -> str:
    """`0.11` -> `11%`."""
    return f"{budget * 100:g}%"


def budget_space(space: ir.Space, budget: float) -> ir.Space:
    """`space` with its constraints replaced by `tokens.mean <= budget`."""
    limit = ir.Constraint(quantity="tokens.mean", op="<=", bound=ir.Num(value=round(budget * 100, 6), unit="%"))
    return space.model_copy(update={"constraints": [limit]})


def failure_reason(error: DeosError) -> str:
    """One line: a DSL error's first diagnostic, any other error's message."""
    return error.diagnostics[0].message if error.diagnostics else error.message


def search_dir(out: Path, budget: float) -> Path:
    """`OUT/budget-B/search`: where the study searches at `budget` (a share; B in percent)."""
    return out / f"budget-{budget * 100:g}" / "search"


def search_dirs(out: Path) -> list[Path]:
    """The study's search directories under `out` (`search_dir`), largest budget first."""
    return sorted(out.glob("budget-*/search"), key=lambda d: float(d.parent.name.removeprefix("budget-")), reverse=True)


class Study:
    """Runs a `StudyPlan` (module docstring), printing progress on `console`."""

    def __init__(self, plan: StudyPlan, console: Console) -> None:
        self.plan, self.console = plan, console
        self.loaded: LoadedModel = resolve_model(plan.model)
        self.task = make_task(plan.data, self.loaded)
        self.batch: Encoded = self.task.eval_batch(plan.examples, "test")
        self.total = 1 + len(plan.budgets) * (1 + len(plan.baselines))
        self.done = 0

    def _announce(self, what: str) -> None:
        self.done += 1
        self.console.print(f"[{self.done}/{self.total}] {what}", highlight=False, markup=False)

    def run(self, save: Callable[[list[Entry]], None]) -> list[Entry]:
        """Every entry of the plan, in order; `save(entries so far)` runs after each budget."""
        self._announce("dense model")
        entries = [self._measure(Entry("dense", DENSE, None, tokens_mean=1.0, setting="no reduction"),
                                 self.loaded.model, None)]
        for budget in self.plan.budgets:
            entries.append(self._searched(budget))
            entries.extend(self._baseline(space, budget) for space in self.plan.baselines)
            save(entries)
        return entries

    def _searched(self, budget: float) -> Entry:
        """Search (or reuse the finished search of) the search space at `budget`, then measure it."""
        space = budget_space(self.plan.search_space, budget)
        entry = Entry(space.name, SEARCH, budget)
        out = search_dir(self.plan.out, budget)
        self._announce(f"budget {budget_label(budget)}: search `{space.name}` into {out}")
        started = time.perf_counter()
        try:
            steps = self._search(space, out)
            searched = load_searched(out, self.loaded)
        except StudyError:
            raise
        except DeosError as error:
            entry.error = failure_reason(error)
            self.console.print(f"  failed: {entry.error}", highlight=False, markup=False)
            return entry
        entry.seconds = time.perf_counter() - started
        entry.tokens_mean = searched.tokens_mean
        entry.setting = f"searched, {steps} steps"
        return self._measure(entry, searched.emitted.module, searched.emitted)

    def _search(self, space: ir.Space, out: Path) -> int:
        """Run the search into `out` unless a finished one with the same arguments is there;
        returns its steps. A different finished search there is an error (nothing is overwritten)."""
        if (out / SCHEDULE).is_file():
            run = read_run(out)
            if run.space.structure() != space.structure() or run.model != self.plan.model or run.data != self.plan.data:
                raise StudyError(f"{out} holds a finished search of other arguments (space, model or data)",
                                 "choose another --out, or delete that directory to search again")
            self.console.print(f"  reusing the finished search in {out}", highlight=False, markup=False)
            return run.steps
        outcome = search(space, self.plan.model, self.plan.data, out, self.plan.options,
                         resume=out.is_dir() and any(out.iterdir()), console=self.console)
        return outcome.steps_done

    def _baseline(self, space: ir.Space, budget: float) -> Entry:
        """Fit `space` to `budget`, compile it and measure it."""
        entry = Entry(space.name, BASELINE, budget)
        self._announce(f"budget {budget_label(budget)}: baseline `{space.name}`")
        started = time.perf_counter()
        try:
            fitted = fit_baseline(space, budget, self.loaded)
            emitted = compile_emitted(fitted.space, self.loaded)
        except DeosError as error:
            entry.error = failure_reason(error)
            self.console.print(f"  not run: {entry.error}", highlight=False, markup=False)
            return entry
        entry.seconds = time.perf_counter() - started
        entry.tokens_mean, entry.setting = fitted.tokens_mean, fitted.describe()
        return self._measure(entry, emitted.module, emitted)

    def _measure(self, entry: Entry, module: nn.Module, emitted: Emitted | None) -> Entry:
        """Fill `entry` with accuracy, counted GFLOPs and (for an emitted graph) its pattern."""
        started = time.perf_counter()
        with self.console.status(f"measuring {entry.method}"):
            entry.accuracy, flops = accuracy_and_flops(self.task, Subject.of(module), self.batch, torch.device("cpu"))
            entry.gflops = flops / 1e9
        if emitted is not None:
            entry.sites = [site_pattern(plan) for plan in emitted.plans.values()]
            entry.hybrid = is_hybrid(emitted.plans)
        entry.seconds += time.perf_counter() - started
        return entry
