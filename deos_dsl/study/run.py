"""The baseline study: the search space against every hand-designed baseline, fixed corner of
the operator and random keep at each token budget, with search seeds and ablations.

For each budget `B` (a share of the visual tokens, layer-averaged as `tokens.mean`):
- the search space runs `seeds` times (policy seed + 0, 1, ...) with its `tokens.mean`
  constraints replaced by `tokens.mean <= B` (a `flops` constraint stays; `deos search` into
  `OUT/budget-B/search`, `search-seed1`, ...; a finished search there with the same space, model,
  data, steps and batch is reused, an unfinished one resumed), and each discrete schedule is compiled;
- every fixed space (baseline, corner, random keep: the kind is the caller's) is fitted to `B`
  (`fit.fit_baseline`: its own trade-off knob, a projector cut where that cannot reach `B`) and
  compiled; one that cannot meet `B` is a row with the reason instead of numbers;
- at the `ablation_budgets`, every ablation space (a learned variant of the search space) is
  searched once, from the space's own inits (`OUT/budget-B/ablation-NAME`).
With `warm` (a fixed row's name) and validation examples (`options.val_size`), each seed also
searches from that row's fitted schedule at `B` (`warm_start`: each active site's keep ratio,
every other site keeping 99%; `search-warm`, `search-warm-seedS`), and the seed's search row is
the best on the validation examples of three candidates: the search from the space's inits,
the warm search and the warm row's own schedule (`start` in the row: the candidates'
validation and test accuracies and which it kept). The test examples decide nothing; a search
row is then never worse on validation than the fixed schedule it starts from.
Every schedule is then measured the same way on its EMITTED graph (tokens really dropped):
which of the fixed test examples it answers right (`hits`, kept for the paired intervals of
`compare.py`), accuracy, FLOPs of one example counted by `FlopCounterMode`, and the operator
pattern (`pattern.py`); a search's row also carries how far discretisation's repair moved its
schedule (`repair`, from its `schedule.json`). The dense model is measured once. The study's
files are rewritten (atomically) after every budget, so an interrupted study keeps what it measured.

Every measured row is kept in a row file (`OUT/dense.json`,
`OUT/budget-B/rows/NAME.json`; a search's in its directory, `row.json`, keyed by its
`schedule.json` too) with what determines them (the space's structure, budget, model,
data and number of test examples). A rerun reuses a row whose file matches, as it reuses a
finished search, so a study can be extended by a budget, a seed or a row without redoing the rest.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from rich.console import Console

from deos_dsl.compiler.models import LoadedModel, resolve_model
from deos_dsl.data import Encoded
from deos_dsl.errors import DeosError, StudyError
from deos_dsl.files import write_text_atomically
from deos_dsl.frontend import ir
from deos_dsl.measure import EmittedSizes, Subject, hits_and_flops, load_searched
from deos_dsl.pipeline.emit import Emitted, compile_emitted
from deos_dsl.search.loop import Options, number, resolved_steps, search
from deos_dsl.search.result import SCHEDULE, read_run, read_schedule
from deos_dsl.tasks import make_task

from .fit import Fitted, fit_baseline
from .pattern import is_hybrid, pattern_text, site_pattern

SEARCH, DENSE, BASELINE, CORNER, RANDOM, ABLATION = "search", "dense", "baseline", "corner", "random", "ablation"
FIXED_KINDS = (BASELINE, CORNER, RANDOM)
T = TypeVar("T")
SEARCH_ROW = "row.json"  # a search's measured row, in its directory
VALIDATION_ROW = "val.json"  # a candidate's validation accuracy in a search's directory (a fixed row's: NAME.val.json)
COLD, WARM, START = "cold", "warm", "start"  # the candidates of a warm study's search row (`Study._search_row`)
MEASURE_CHUNK = 50  # examples per call of an emitted graph exported at a fixed batch size


@dataclass
class Entry:
    """One row of the study: a schedule at a budget (None: the dense model) and what it measured;
    `setting` says how it was obtained, `error` why there are no numbers; `hits`: one character
    per test example, `1` where it answered right; `repair` (a search): its schedule's
    `repair_size`, `expected_met` and validation accuracies before and after repair; `start` (a
    warm study's search row): the row it started from, the candidates' (`COLD`, `WARM`, `START`)
    validation and test accuracies and which it kept."""

    method: str
    kind: str
    budget: float | None
    seed: int | None = None
    tokens_mean: float | None = None
    gflops: float | None = None
    accuracy: dict[str, float] | None = None
    sites: list[dict[str, Any]] = field(default_factory=list)
    hybrid: bool = False
    setting: str = ""
    seconds: float = 0.0
    error: str | None = None
    hits: str = ""
    repair: dict[str, Any] = field(default_factory=dict)
    start: dict[str, Any] = field(default_factory=dict)

    @property
    def pattern(self) -> str:
        return pattern_text(self.sites)

    def to_json(self) -> dict[str, Any]:
        return dict(asdict(self), pattern=self.pattern)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        """The entry `to_json` wrote (its derived `pattern` dropped)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def repair_report(schedule: dict[str, Any]) -> dict[str, Any]:
    """What a search row reports of its `schedule.json`: how far repair moved the rounded
    schedule, whether the expected schedule met every limit before discretisation, and the
    validation accuracies (overall %) before and after repair (when it validated)."""
    accuracy = schedule.get("accuracy", {})
    return {"size": schedule.get("repair_size"), "moves": len(schedule.get("repair", [])),
            "expected_met": schedule.get("expected_met"),
            **{f"val_{key}": accuracy[key]["overall"] for key in ("rounded", "schedule") if key in accuracy}}


@dataclass(frozen=True)
class StudyPlan:
    """What to run: `search_space` (learned, `seeds` times) and the `fixed` spaces (kind ->
    spaces: baselines, corners, random keep) at `budgets` (shares); the `ablations` (learned)
    at the `ablation_budgets` among them; `warm`: the fixed row every search starts from."""

    search_space: ir.Space
    fixed: dict[str, list[ir.Space]]
    budgets: tuple[float, ...]
    model: str
    data: str
    out: Path
    options: Options
    examples: int = 1000
    seeds: int = 1
    ablations: tuple[ir.Space, ...] = ()
    ablation_budgets: tuple[float, ...] = ()
    warm: str | None = None

    def __post_init__(self) -> None:
        """`StudyError` for a `warm` that names no fixed row, or comes without validation examples."""
        if self.warm is not None and self.warm not in self.fixed_spaces:
            raise StudyError(f"--warm names `{self.warm}`, which is no fixed row of this study",
                             f"name one of: {', '.join(self.fixed_spaces)}")
        if self.warm is not None and self.options.val_size == 0:
            raise StudyError("--warm needs validation examples: they choose each seed's row among the candidates",
                             "pass --val N (e.g. --val 200)")

    @property
    def baselines(self) -> list[ir.Space]:
        return self.fixed.get(BASELINE, [])

    @property
    def fixed_spaces(self) -> dict[str, ir.Space]:
        """Every fixed space by name."""
        return {space.name: space for spaces in self.fixed.values() for space in spaces}


def budget_label(budget: float) -> str:
    """`0.11` -> `11%`."""
    return f"{budget * 100:g}%"


def budget_space(space: ir.Space, budget: float) -> ir.Space:
    """`space` with its `tokens.mean` constraints replaced by `tokens.mean <= budget`; its other
    constraints (a FLOPs budget) stay, after it."""
    limit = ir.Constraint(quantity="tokens.mean", op="<=", bound=ir.Num(value=round(budget * 100, 6), unit="%"))
    others = [constraint for constraint in space.constraints if constraint.quantity != "tokens.mean"]
    return space.model_copy(update={"constraints": [limit, *others]})


def failure_reason(error: DeosError) -> str:
    """One line: a DSL error's first diagnostic, any other error's message."""
    return error.diagnostics[0].message if error.diagnostics else error.message


def search_dir(out: Path, budget: float, seed: int = 0, ablation: str | None = None, warm: bool = False) -> Path:
    """Where the study searches at `budget` (a share; B in percent): `OUT/budget-B/search` (the
    first seed), `search-seedS` (seed S), `search-warm`, `search-warm-seedS` (warm-started),
    `ablation-NAME` (an ablation)."""
    search = "search-warm" if warm else "search"
    name = f"ablation-{ablation}" if ablation is not None else search if seed == 0 else f"{search}-seed{seed}"
    return out / f"budget-{budget * 100:g}" / name


def read_kept(path: Path, value: Callable[[dict[str, Any]], T], key: dict[str, Any]) -> T | None:
    """`value(data)` of the JSON file `path` written as `{"key": ..., ...}` when its key is `key`;
    None when there is no such file or it holds another key; `StudyError` for an unreadable one."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return value(data) if data["key"] == key else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise StudyError(f"{path}: unreadable kept measurement ({type(error).__name__}: {error})",
                         "delete it to measure it again") from None


def schedule_digest(out: Path) -> str:
    """SHA-256 of the finished search's `schedule.json` in `out` (what its measured rows are keyed by)."""
    return hashlib.sha256((out / SCHEDULE).read_bytes()).hexdigest()


def warm_start(entry: Entry) -> dict[str, float]:
    """The keep ratios a search starts from to start at `entry`'s schedule: each active site's
    kept share of the tokens entering it, by short name (`graph.start_keeps`)."""
    return {site["site"]: site["keep"] / site["entering"] for site in entry.sites if site["active"] and site["entering"]}


def with_seed(space: ir.Space, offset: int) -> ir.Space:
    """`space` with its policy seed raised by `offset`."""
    policy = space.policy
    assert policy is not None and isinstance(policy.seed, ir.Num), "the study searches resolved spaces"
    return space.model_copy(update={"policy": policy.model_copy(update={"seed": ir.Num(value=policy.seed.value + offset)})})


def row_file(out: Path, budget: float | None, name: str) -> Path:
    """Where the study keeps a measured row (module docstring): `OUT/dense.json` for the dense
    model (`budget` None), `OUT/budget-B/rows/NAME.json` for a fixed row."""
    return out / "dense.json" if budget is None else out / f"budget-{budget * 100:g}" / "rows" / f"{name}.json"


def search_dirs(out: Path) -> list[Path]:
    """The study's first-seed search directories under `out` (`search_dir`), largest budget first."""
    return sorted(out.glob("budget-*/search"), key=lambda d: float(d.parent.name.removeprefix("budget-")), reverse=True)


class Study:
    """Runs a `StudyPlan` (module docstring), printing progress on `console`."""

    def __init__(self, plan: StudyPlan, console: Console) -> None:
        self.plan, self.console = plan, console
        self.loaded: LoadedModel = resolve_model(plan.model)
        self.task = make_task(plan.data, self.loaded)
        self.batch: Encoded = self.task.eval_batch(plan.examples, "test")
        fixed = sum(len(spaces) for spaces in plan.fixed.values())
        ablated = len(set(plan.ablation_budgets) & set(plan.budgets)) * len(plan.ablations)
        searches = plan.seeds * (2 if plan.warm is not None else 1)
        self.total = 1 + len(plan.budgets) * (searches + fixed) + ablated
        self.done = 0

    def _announce(self, what: str) -> None:
        self.done += 1
        self.console.print(f"[{self.done}/{self.total}] {what}", highlight=False, markup=False)

    def run(self, save: Callable[[list[Entry]], object]) -> list[Entry]:
        """Every entry of the plan, in order; `save(entries so far)` runs after each budget."""
        self._announce("dense model")
        dense = Entry("dense", DENSE, None, tokens_mean=1.0, setting="no reduction")
        entries = [self._kept(dense, None, lambda: self._measure(dense, Subject.of(self.loaded.model), None))]
        plan = self.plan
        for budget in plan.budgets:
            fixed = [self._fitted(space, budget, kind) for kind in FIXED_KINDS for space in plan.fixed.get(kind, [])]
            warm = next((entry for entry in fixed if entry.method == plan.warm), None)
            if warm is not None and warm.error is not None:
                self.console.print(f"  {warm.method} has no schedule at {budget_label(budget)}: the searches start from "
                                   "the space's inits", highlight=False, markup=False)
                warm = None
            entries.extend(self._search_row(plan.search_space, budget, seed, warm) for seed in range(plan.seeds))
            entries.extend(fixed)
            if budget in plan.ablation_budgets:
                entries.extend(self._searched(space, budget, 0, ablation=True) for space in plan.ablations)
            save(entries)
        return entries

    def _search_row(self, space: ir.Space, budget: float, seed: int, warm: Entry | None) -> Entry:
        """The search row of `seed` at `budget`: the search from the space's inits; with `warm`,
        the best on the validation examples of that search, the search started from `warm`'s
        schedule and `warm`'s schedule itself (ties go to `warm`, then to the warm search)."""
        cold = self._searched(space, budget, seed)
        if warm is None:
            return cold
        candidates = {START: warm, WARM: self._searched(space, budget, seed, warm=warm), COLD: cold}
        measured = {name: entry for name, entry in candidates.items() if entry.error is None}
        with self.console.status("validating the candidates"):
            validation = {name: self._validation_accuracy(name, entry, seed) for name, entry in measured.items()}
        kept = max(validation, key=validation.__getitem__)  # the first of equals: START, then WARM
        chosen = measured[kept]
        size = self.plan.options.val_size
        return replace(chosen, kind=SEARCH, method=cold.method, seed=seed, setting=(
            f"the best on {size} validation examples of: searched from the space's inits, searched from "
            f"{warm.method}, {warm.method} itself: {kept} ({chosen.setting})"),
            start={"from": warm.method, "val_size": size, "kept": kept, "val": validation,
                   "test": {name: entry.accuracy["overall"] for name, entry in measured.items()  # type: ignore[index]
                            if entry.accuracy is not None}})

    def _validation_accuracy(self, candidate: str, entry: Entry, seed: int) -> float:
        """Overall accuracy (%) of `entry`'s emitted schedule on the searches' validation examples
        (a `START` row fitted and compiled again), kept beside its row (`VALIDATION_ROW`) and
        reused while its schedule, model, data and number of examples are the same."""
        assert entry.budget is not None
        size, budget = self.plan.options.val_size, entry.budget
        key: dict[str, Any] = {"model": self.plan.model, "data": self.plan.data, "val_size": size}
        if candidate == START:
            space = self.plan.fixed_spaces[entry.method]
            path = row_file(self.plan.out, budget, entry.method).with_suffix("." + VALIDATION_ROW)
            key.update(space=space.structure(), budget=budget)
        else:
            out = search_dir(self.plan.out, budget, seed, warm=candidate == WARM)
            path = out / VALIDATION_ROW
            key.update(schedule=schedule_digest(out))
        kept = read_kept(path, lambda data: float(data["accuracy"]), key)
        if kept is not None:
            return kept
        if candidate == START:
            fitted, emitted = self._fit_and_compile(space, budget)
            subject = EmittedSizes(fitted.space, self.loaded, None, emitted, self.task).subject()
        else:
            subject = load_searched(out, self.loaded).sizes.subject()
        batch = self.task.eval_batch(size, "val")
        hits, _ = hits_and_flops(self.task, subject, batch, torch.device("cpu"), MEASURE_CHUNK)
        accuracy = self.task.accuracy(hits, batch)["overall"]
        write_text_atomically(path, json.dumps({"key": key, "accuracy": accuracy}) + "\n")
        return accuracy

    def _searched(self, space: ir.Space, budget: float, seed: int, ablation: bool = False, warm: Entry | None = None) -> Entry:
        """Search (or reuse the finished search of) `space` at `budget` with its policy seed
        raised by `seed`, from `warm`'s schedule when given, then measure it (or reuse its row
        file, keyed by its schedule too)."""
        space = with_seed(budget_space(space, budget), seed)
        entry = Entry(space.name, ABLATION if ablation else SEARCH, budget, seed)
        out = search_dir(self.plan.out, budget, seed, space.name if ablation else None, warm is not None)
        options = replace(self.plan.options, start=warm_start(warm) if warm is not None else {})
        self._announce(f"budget {budget_label(budget)}: search `{space.name}` (seed +{seed}"
                       f"{f', from {warm.method}' if warm is not None else ''}) into {out}")
        started = time.perf_counter()
        try:
            steps = self._search(space, out, options)
        except StudyError:
            raise
        except DeosError as error:
            return self._failed(entry, error)
        also = {"schedule": schedule_digest(out), **({"from": warm.method} if warm is not None else {})}
        return self._kept(entry, space, lambda: self._load_and_measure(entry, space, out, steps, started, warm),
                          out / SEARCH_ROW, also)

    def _load_and_measure(self, entry: Entry, space: ir.Space, out: Path, steps: int, started: float,
                          warm: Entry | None) -> Entry:
        """Measure the search of `space` finished in `out` after `steps` steps (begun at `started`,
        from `warm`'s schedule when given)."""
        try:
            searched = load_searched(out, self.loaded)
        except DeosError as error:
            return self._failed(entry, error)
        entry.seconds = time.perf_counter() - started
        entry.tokens_mean = searched.tokens_mean
        entry.setting = f"searched, {steps} steps, seed {int(number(space.policy.seed))}"  # type: ignore[union-attr]
        entry.setting += f", from {warm.method}" if warm is not None else ""
        entry.repair = repair_report(read_schedule(out)[0])
        return self._measure(entry, searched.sizes.subject(), searched.emitted)

    def _failed(self, entry: Entry, error: DeosError) -> Entry:
        """`entry` with the reason its search failed (printed)."""
        entry.error = failure_reason(error)
        self.console.print(f"  failed: {entry.error}", highlight=False, markup=False)
        return entry

    def _search(self, space: ir.Space, out: Path, options: Options) -> int:
        """Run the search into `out` unless a finished one with the same arguments is there;
        returns its steps. A different finished search there is an error (nothing is overwritten)."""
        if (out / SCHEDULE).is_file():
            run, policy = read_run(out), space.policy
            assert policy is not None, "the study searches resolved spaces"
            steps = resolved_steps(options, policy)
            if run.space.structure() != space.structure() or run.model != self.plan.model or run.data != self.plan.data \
                    or run.steps != steps or run.batch_size != options.batch_size or run.start != options.start:
                raise StudyError(f"{out} holds a finished search of other arguments (space, model, data, steps, batch "
                                 "or start)", "choose another --out, or delete that directory to search again")
            self.console.print(f"  reusing the finished search in {out}", highlight=False, markup=False)
            return run.steps
        outcome = search(space, self.plan.model, self.plan.data, out, options,
                         resume=out.is_dir() and any(out.iterdir()), console=self.console)
        return outcome.steps_done

    def _kept(self, entry: Entry, space: ir.Space | None, measure: Callable[[], Entry], path: Path | None = None,
              also: dict[str, str] | None = None) -> Entry:
        """The row `entry` (of `space`; None: dense) read back from its row file (`path`, default
        `row_file`) when that holds the same row measured the same way (`also`: more of what
        determines it), else `measure()`, written there."""
        path = path or row_file(self.plan.out, entry.budget, entry.method)
        key = {"space": None if space is None else space.structure(), "kind": entry.kind, "budget": entry.budget,
               "model": self.plan.model, "data": self.plan.data, "examples": self.plan.examples, **(also or {})}
        reused = read_kept(path, lambda data: Entry.from_json(data["entry"]), key)
        if reused is not None:
            self.console.print(f"  reusing the row in {path}", highlight=False, markup=False)
            return reused
        measured = measure()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps({"key": key, "entry": measured.to_json()}, indent=1) + "\n")
        return measured

    def _fitted(self, space: ir.Space, budget: float, kind: str) -> Entry:
        """Fit the fixed `space` (a row of `kind`) to `budget`, compile it and measure it (or
        reuse its row file)."""
        entry = Entry(space.name, kind, budget)
        self._announce(f"budget {budget_label(budget)}: {kind} `{space.name}`")
        return self._kept(entry, space, lambda: self._fit_and_measure(entry, space, budget))

    def _fit_and_measure(self, entry: Entry, space: ir.Space, budget: float) -> Entry:
        """Fit `space` to `budget`, compile and measure it into `entry` (the reason where it cannot)."""
        started = time.perf_counter()
        try:
            fitted, emitted = self._fit_and_compile(space, budget)
        except DeosError as error:
            entry.error = failure_reason(error)
            self.console.print(f"  not run: {entry.error}", highlight=False, markup=False)
            return entry
        entry.seconds = time.perf_counter() - started
        entry.tokens_mean, entry.setting = fitted.tokens_mean, fitted.describe()
        return self._measure(entry, EmittedSizes(fitted.space, self.loaded, None, emitted, self.task).subject(), emitted)

    def _fit_and_compile(self, space: ir.Space, budget: float) -> tuple[Fitted, Emitted]:
        """The fixed `space` fitted to `budget` and its emitted graph."""
        fitted = fit_baseline(space, budget, self.loaded)
        return fitted, compile_emitted(fitted.space, self.loaded)

    def _measure(self, entry: Entry, subject: Subject, emitted: Emitted | None) -> Entry:
        """Fill `entry` with hits, accuracy, counted GFLOPs and (for an emitted graph) its pattern;
        a graph exported at one batch size runs `MEASURE_CHUNK` examples per call."""
        started = time.perf_counter()
        with self.console.status(f"measuring {entry.method}"):
            hits, flops = hits_and_flops(self.task, subject, self.batch, torch.device("cpu"), MEASURE_CHUNK)
            entry.accuracy, entry.gflops = self.task.accuracy(hits, self.batch), flops / 1e9
            entry.hits = "".join("1" if hit else "0" for hit in hits.tolist())
        if emitted is not None:
            entry.sites = [site_pattern(plan) for plan in emitted.plans.values()]
            entry.hybrid = is_hybrid(emitted.plans)
        entry.seconds += time.perf_counter() - started
        return entry
