"""A finished search directory, compiled for measurement, and its evaluation files.

`load_searched` reads `run.json` and `schedule.json` (`SearchError` for a missing or corrupt
directory), makes the task of the search's data (or of other data: `deos evaluate --data`)
and compiles the discrete schedule into the emitted graph, which really drops the tokens (a
graph exported at a fixed batch size is compiled again for each batch size measured).
`write_evaluation` writes `evaluation.json` and `evaluation.md` beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from deos_dsl.compiler.models import LoadedModel, resolve_model
from deos_dsl.compiler.trace import SYMBOLIC
from deos_dsl.files import write_text_atomically
from deos_dsl.frontend import ir
from deos_dsl.pipeline.emit import Emitted, compile_emitted
from deos_dsl.search.result import Run, read_run, read_schedule, write_json
from deos_dsl.tasks import Task, make_task

from .compare import Comparison, Subject
from .render import comparison_markdown

EVALUATION_JSON, EVALUATION_MD = "evaluation.json", "evaluation.md"


@dataclass
class EmittedSizes:
    """An emitted schedule as `compare` measures it: `at(batch_size)` is the module for that many
    examples per call (the one graph when traced symbolically; else `space` with `settings`
    compiled again at that size on `task`'s first examples, once per size)."""

    space: ir.Space
    loaded: LoadedModel
    settings: dict[str, ir.SiteSettings] | None
    emitted: Emitted
    task: Task
    _by_size: dict[int, nn.Module] = field(default_factory=dict)

    @property
    def fixed(self) -> bool:
        return self.emitted.traced.tracer != SYMBOLIC

    def at(self, batch_size: int) -> nn.Module:
        if not self.fixed:
            return self.emitted.module
        if batch_size not in self._by_size:
            rows = self.task.eval_batch(batch_size).to(next(self.loaded.model.parameters()).device)
            example = replace(self.loaded, args=rows.args, kwargs=rows.kwargs)
            self._by_size[batch_size] = compile_emitted(self.space, example, self.settings).module
        return self._by_size[batch_size]

    def subject(self) -> Subject:
        return Subject(self.at, fixed=self.fixed)


@dataclass
class Searched:
    """The search in `directory`: its `run`, the discrete `tokens.mean` of its schedule (None
    when the space limits no `tokens.mean`), the task it is measured on, the dense model and the
    emitted graph (compiled on the model's example inputs; `sizes`: per batch size)."""

    directory: Path
    run: Run
    tokens_mean: float | None
    task: Task
    loaded: LoadedModel
    settings: dict[str, ir.SiteSettings]
    emitted: Emitted

    def __post_init__(self) -> None:
        self.sizes = EmittedSizes(self.run.space, self.loaded, self.settings, self.emitted, self.task)

    @property
    def dense(self) -> nn.Module:
        return self.loaded.model

    @property
    def title(self) -> str:
        return f"{self.run.space.name} on {self.run.model}: dense vs emitted ({self.directory})"

    def subjects(self) -> tuple[Subject, Subject]:
        """The dense model and the emitted one, as `compare` measures them."""
        return Subject.of(self.dense), self.sizes.subject()


def tokens_mean(schedule: dict[str, Any]) -> float | None:
    """The discrete value of the schedule's `tokens.mean` limit, if it has one."""
    values = [value for label, value in schedule.get("constraints", {}).items() if label.startswith("tokens.mean")]
    return float(values[0]) if values else None


def load_searched(directory: Path, loaded: LoadedModel | None = None, data: str | None = None,
                  device: str = "cpu", trust_code: bool = False) -> Searched:
    """Load and compile the search in `directory` (module docstring) on `loaded` when that is
    the search's model (a caller that holds it saves a reload), else on the model the run names;
    measured on `data` (default: the search's own). A `module:` model or data named by
    `run.json` runs only with `trust_code` (`Run.require_trust`). Raises `DeosError`."""
    run = read_run(directory)
    reload = loaded is None or loaded.name != run.model
    run.require_trust(directory, trust_code, model=reload, data=data is None)
    schedule, settings = read_schedule(directory)
    if reload:
        loaded = resolve_model(run.model, run.dtype, device)
    task = make_task(data or run.data, loaded)
    emitted = compile_emitted(run.space, loaded, settings)
    return Searched(directory, run, tokens_mean(schedule), task, loaded, settings, emitted)


def evaluation_json(searched: Searched, comparison: Comparison) -> dict[str, Any]:
    """What `evaluation.json` holds: the search's space, model, data and `tokens.mean`, then the comparison."""
    return {"space": searched.run.space.name, "model": searched.run.model, "data": searched.task.name,
            "tokens_mean": searched.tokens_mean, **comparison.to_json()}


def write_evaluation(searched: Searched, comparison: Comparison) -> list[Path]:
    """Write `evaluation.json` and `evaluation.md` into the search directory, atomically."""
    paths = [searched.directory / EVALUATION_JSON, searched.directory / EVALUATION_MD]
    write_json(paths[0], evaluation_json(searched, comparison))
    write_text_atomically(paths[1], comparison_markdown(comparison, searched.title))
    return paths
