"""The files of a search directory besides the checkpoint and the log, and their loading.

- `run.json`: what was searched (`Run`): the resolved space (IR JSON), the model and data
  names, batch size, steps, seed, warm start. Written before the first step; `--resume` checks the given
  arguments against it.
- `result.pt`: every site module's state after the last step (`torch.save`, loaded with
  `weights_only=True`).
- `schedule.json`: the discrete schedule (per site: gate, tokens entering / kept / leaving,
  regime values, corner, snapped parameters), each limit's discrete value and target, the
  repair moves, validation accuracies, and per site the fixed `ir.SiteSettings` that
  `deos emit DIR` compiles (`compile_emitted(..., settings=...)`).
Loading validates and raises `SearchError` for a missing or corrupt directory;
`emit_result` compiles the schedule into `emitted/` (`deos emit DIR`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from deos_dsl.compiler.models import resolve_model
from deos_dsl.errors import SearchError
from deos_dsl.files import write_atomically, write_text_atomically
from deos_dsl.frontend import ir
from deos_dsl.pipeline.emit import Emitted, compile_emitted, write_artifacts
from deos_dsl.pipeline.generate import write_generative

from .log import finite_json

RUN, RESULT, SCHEDULE, EMITTED = "run.json", "result.pt", "schedule.json", "emitted"


@dataclass(frozen=True)
class Run:
    """The arguments of a search, as `run.json` stores them (`space` is the resolved IR, `start`
    the warm start's keep ratios, `graph.start_keeps`; empty: the space's inits)."""

    space: ir.Space
    model: str
    data: str
    batch_size: int
    steps: int
    seed: int
    dtype: str = "float32"
    start: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["space"] = json.loads(self.space.model_dump_json())
        return data

    def require_trust(self, out: Path, trusted: bool, model: bool = True, data: bool = True) -> None:
        """Refuse (`SearchError`) to load the `model` / `data` this run names when that would run
        Python code (a `module:` factory) and the caller did not say it trusts `out`."""
        named = [(kind, spec) for kind, spec, used in (("model", self.model, model), ("data", self.data, data)) if used]
        code = [f"{kind} `{spec}`" for kind, spec in named if spec.startswith("module:")]
        if code and not trusted:
            raise SearchError(f"{out / RUN} names {' and '.join(code)}: loading it imports and runs that Python code",
                              "if you trust this search directory (you ran it yourself), pass --trust-code")

    def differences(self, other: Run) -> list[str]:
        """The fields where `other` differs from this run (the space compared structurally)."""
        return [name for name in ("space", "model", "data", "batch_size", "steps", "seed", "dtype", "start")
                if getattr(self, name) != getattr(other, name)]


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` by `data` as indented JSON (non-finite numbers as strings), atomically."""
    write_text_atomically(path, json.dumps(finite_json(data), indent=2) + "\n")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise SearchError(f"{path} does not exist: {path.parent} holds no {what}",
                          "give the --out directory of a search (run `deos search` first)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SearchError(f"{path} is unreadable or corrupt ({error})", "run the search again") from None
    if not isinstance(data, dict):
        raise SearchError(f"{path} is not a deos {what}", "run the search again")
    return data


def write_run(out: Path, run: Run) -> None:
    write_json(out / RUN, run.to_json())


def read_run(out: Path) -> Run:
    """The `run.json` of a search directory; raises `SearchError`."""
    data = _read_json(out / RUN, "search")
    try:
        return Run(ir.Space.model_validate(data["space"]), str(data["model"]), str(data["data"]),
                   int(data["batch_size"]), int(data["steps"]), int(data["seed"]), str(data.get("dtype", "float32")),
                   {str(name): float(ratio) for name, ratio in data.get("start", {}).items()})
    except (KeyError, TypeError, ValueError, ValidationError) as error:
        raise SearchError(f"{out / RUN} is not a deos search description ({str(error).splitlines()[0]})",
                          "run the search again") from None


def write_result(out: Path, modules: dict[str, dict[str, torch.Tensor]], schedule: dict[str, Any],
                 settings: dict[str, ir.SiteSettings]) -> None:
    """Write `result.pt` (module states) and `schedule.json` (the schedule plus fixed settings)."""
    write_atomically(out / RESULT, lambda temp: torch.save({"modules": modules}, temp))
    full = dict(schedule, settings={name: s.structure() for name, s in settings.items()})  # no source spans
    write_json(out / SCHEDULE, full)


def read_schedule(out: Path) -> tuple[dict[str, Any], dict[str, ir.SiteSettings]]:
    """`schedule.json` of a finished search and its fixed settings per site; raises `SearchError`."""
    data = _read_json(out / SCHEDULE, "finished search (it may still run, or was stopped: resume it)")
    try:
        settings = {name: ir.SiteSettings.model_validate(s) for name, s in data["settings"].items()}
    except (KeyError, AttributeError, ValidationError) as error:
        raise SearchError(f"{out / SCHEDULE} has no valid site settings ({str(error).splitlines()[0]})",
                          "run the search again") from None
    return data, settings


def emit_result(directory: Path, target: Path | None = None, trust_code: bool = False, generate: bool = False,
                batch: int | None = None) -> tuple[Emitted, list[Path]]:
    """Compile the discrete schedule of the search in `directory` on its model and write the
    artefacts (`model.pt2`, `model.py`, `plan.json`; with `generate` also `prefill.pt2`) into
    `target` (default `directory/emitted`), on `batch` example rows (default: the model's); a
    `module:` model named by `run.json` runs only with `trust_code` (`Run.require_trust`)."""
    run = read_run(directory)
    run.require_trust(directory, trust_code, data=False)
    _, settings = read_schedule(directory)
    loaded = resolve_model(run.model, run.dtype)
    loaded = loaded if batch is None else loaded.with_batch(batch)
    emitted = compile_emitted(run.space, loaded, settings)
    out = target or directory / EMITTED
    return emitted, write_generative(emitted, loaded, out) if generate else write_artifacts(emitted, out)
