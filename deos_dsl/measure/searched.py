"""A finished search directory, compiled for measurement, and its evaluation files.

`load_searched` reads `run.json` and `schedule.json` (`SearchError` for a missing or corrupt
directory), checks that the search's model answers shapes-VQA batches (the check of `deos
search --data`) and compiles the discrete schedule into the emitted graph, which really drops
the tokens. `write_evaluation` writes `evaluation.json` and `evaluation.md` beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from deos_dsl.compiler.models import LoadedModel, resolve_model
from deos_dsl.files import write_text_atomically
from deos_dsl.pipeline.emit import Emitted, compile_emitted
from deos_dsl.search.data import check_model, parse_data
from deos_dsl.search.result import Run, read_run, read_schedule, write_json

from .compare import Comparison
from .render import comparison_markdown

EVALUATION_JSON, EVALUATION_MD = "evaluation.json", "evaluation.md"


@dataclass(frozen=True)
class Searched:
    """The search in `directory`: its `run`, the discrete `tokens.mean` of its schedule (None
    when the space limits no `tokens.mean`), the dense model and the emitted graph."""

    directory: Path
    run: Run
    tokens_mean: float | None
    dense: nn.Module
    emitted: Emitted

    @property
    def title(self) -> str:
        return f"{self.run.space.name} on {self.run.model}: dense vs emitted ({self.directory})"


def tokens_mean(schedule: dict[str, Any]) -> float | None:
    """The discrete value of the schedule's `tokens.mean` limit, if it has one."""
    values = [value for label, value in schedule.get("constraints", {}).items() if label.startswith("tokens.mean")]
    return float(values[0]) if values else None


def load_searched(directory: Path, loaded: LoadedModel | None = None) -> Searched:
    """Load and compile the search in `directory` (module docstring) on `loaded` when that is
    the search's model (a caller that holds it saves a reload), else on the model the run names;
    raises `SearchError`, `DeosCompileError` or `DeosError`."""
    run = read_run(directory)
    schedule, settings = read_schedule(directory)
    if loaded is None or loaded.name != run.model:
        loaded = resolve_model(run.model)
    check_model(parse_data(run.data), loaded)
    emitted = compile_emitted(run.space, loaded, settings)
    return Searched(directory, run, tokens_mean(schedule), loaded.model, emitted)


def evaluation_json(searched: Searched, comparison: Comparison) -> dict[str, Any]:
    """What `evaluation.json` holds: the search's space, model and `tokens.mean`, then the comparison."""
    return {"space": searched.run.space.name, "model": searched.run.model, "tokens_mean": searched.tokens_mean,
            **comparison.to_json()}


def write_evaluation(searched: Searched, comparison: Comparison) -> list[Path]:
    """Write `evaluation.json` and `evaluation.md` into the search directory, atomically."""
    paths = [searched.directory / EVALUATION_JSON, searched.directory / EVALUATION_MD]
    write_json(paths[0], evaluation_json(searched, comparison))
    write_text_atomically(paths[1], comparison_markdown(comparison, searched.title))
    return paths
