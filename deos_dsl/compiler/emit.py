"""Emit a space on a model: the discretised graph as a `torch.export` `.pt2`, its Python code and a plan.

`compile_emitted(space, loaded)` runs the whole pipeline: trace (a graph whose sequence length
export specialised is re-traced with `torch.fx.symbolic_trace` when that works, see
`passes/discretise.py`), bind_sites, insert_scores, discretise (each site's decision from its
IR: `activate` on -> gate on, `retain` -> keep count; learned parameters at their init until a
search result exists), cleanup, verify.

`write_artifacts(emitted, out)` writes, into a temporary sibling directory renamed onto `out`
only once everything is written (never a half-written `out`):
- `model.pt2`: `torch.export.save` of the emitted graph re-exported on the example inputs
  (static shapes: the plan fixes every token count), returning the tensor leaves of the
  model's output as a flat tuple (no library output class to deserialise). It reloads with `torch.export.load` and
  runs with torch alone; every payload is raw tensor data or loads with `weights_only=True`
  (checked by `unsafe_payloads`), so loading never unpickles an arbitrary object;
- `model.py`: the emitted fx graph's generated code (`gm.code`);
- `plan.json`: model, space, tracer, and per site its gate, keep count, regime parameters and
  the tokens entering / leaving it.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from deos_dsl.frontend import ir

from .blocks import build_block_map
from .errors import DeosCompileError, UntraceableModelError
from .hard_site import SitePlan
from .models import LoadedModel
from .trace import EXPORT, SYMBOLIC, TracedModel, trace

ARTIFACTS = ("model.pt2", "model.py", "plan.json")


@dataclass
class Emitted:
    """The emitted graph of `space` on `model_name`, with its plans and measured lengths."""

    model_name: str
    space_name: str
    traced: TracedModel
    plans: dict[str, SitePlan]
    lengths: dict[str, tuple[int, int]]

    @property
    def graph_module(self) -> fx.GraphModule:
        return self.traced.graph_module

    def plan_json(self) -> dict[str, Any]:
        sites = []
        for name, plan in self.plans.items():
            entry = plan.to_json()
            n_in, n_out = self.lengths.get(name, (None, None))
            entry.update(tokens_in=n_in, tokens_out=n_out)
            sites.append(entry)
        return {"model": self.model_name, "space": self.space_name, "tracer": self.traced.tracer, "sites": sites}


def _trace_for_emit(loaded: LoadedModel) -> TracedModel:
    traced = trace(loaded.model, loaded.args, loaded.kwargs)
    if traced.tracer == EXPORT and not traced.dynamic_dims:
        try:
            return trace(loaded.model, loaded.args, loaded.kwargs, tracers=(SYMBOLIC,))
        except UntraceableModelError:
            return traced  # discretise explains why a static export cannot be emitted
    return traced


def compile_emitted(space: ir.Space, loaded: LoadedModel) -> Emitted:
    """Run the emit pipeline (module docstring); raises `DeosCompileError` / `DeosError`."""
    from deos_dsl.passes.bind_sites import bind_sites
    from deos_dsl.passes.cleanup import cleanup
    from deos_dsl.passes.discretise import discretise
    from deos_dsl.passes.insert_scores import insert_scores
    from deos_dsl.passes.verify import verify

    traced = _trace_for_emit(loaded)
    block_map = build_block_map(traced, loaded.roles, loaded.spans)
    sites = bind_sites(space, block_map)
    scores = insert_scores(space, block_map, sites)
    plans, calls = discretise(space, block_map, sites, scores)
    cleanup(traced.graph_module)
    lengths = verify(traced, calls, plans)
    return Emitted(loaded.name, space.name, traced, plans, lengths)


class FlatOutputs(nn.Module):
    """`module` with its output flattened to a tuple of its tensor leaves, so that the exported
    program carries no library output class (loading it then needs torch alone)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        return tuple(leaf for leaf in pytree.tree_leaves(self.module(*args, **kwargs)) if isinstance(leaf, torch.Tensor))


def export_program(emitted: Emitted) -> torch.export.ExportedProgram:
    """The emitted graph, outputs flattened (`FlatOutputs`), re-exported on its example inputs."""
    traced = emitted.traced
    try:
        return torch.export.export(FlatOutputs(traced.graph_module), traced.args, traced.kwargs, strict=False)
    except Exception as error:  # noqa: BLE001  (any export failure is reported with its first line)
        first = next((line for line in str(error).splitlines() if line.strip()), "")
        raise DeosCompileError(f"cannot export the emitted graph: {type(error).__name__}: {first}",
                               "report the model; the emitted fx code is still available with gm.code") from error


def unsafe_payloads(pt2: Path) -> list[str]:
    """Payloads of a `.pt2` archive that `torch.export.load` would unpickle as arbitrary objects:
    weights / constants stored as pickles, and sample inputs that `weights_only` loading refuses
    (torch then falls back to a full unpickle). An emitted archive has none."""
    found = []
    with zipfile.ZipFile(pt2) as archive:
        for name in archive.namelist():
            if name.endswith(".json") and ("weights_config" in name or "constants_config" in name):
                config = json.loads(archive.read(name)).get("config", {})
                found += [key for key, payload in config.items() if payload.get("use_pickle")]
            elif "/sample_inputs/" in name and archive.read(name):
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception:  # noqa: BLE001  (any refusal means a full unpickle on load)
                    found.append(name)
    return found


def write_artifacts(emitted: Emitted, out: Path) -> list[Path]:
    """Write `ARTIFACTS` into the new directory `out` atomically; returns their paths."""
    if out.exists():
        raise DeosCompileError(f"output directory {out} already exists", "choose a new --out or remove it")
    program = export_program(emitted)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        torch.export.save(program, temp / "model.pt2")
        unsafe = unsafe_payloads(temp / "model.pt2")
        if unsafe:
            raise DeosCompileError(f"the exported program stores pickled payloads ({', '.join(unsafe)})",
                                   "report the model: emitted archives must load without unpickling")
        (temp / "model.py").write_text(emitted.graph_module.code, encoding="utf-8")
        (temp / "plan.json").write_text(json.dumps(emitted.plan_json(), indent=2) + "\n", encoding="utf-8")
        temp.rename(out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return [out / name for name in ARTIFACTS]
