"""Acceptance benchmark: a 25% search on CPU against every fixed baseline at the same budget.

1. Searches `eos_25` (`benchmarks/search_25.deos`: the EOS space, `tokens.mean <= 25%`) on the
   embedded model and benchmark, on the CPU, timed from start to result (tracing, steps,
   discretisation, validation); the result lands in `--out` (default `runs/search_25`).
2. Evaluates every fixed baseline of the same file, and the bundled `pool2x2`, at the same
   budget: each one's discrete schedule is checked to meet `tokens.mean <= 25%` exactly, then run
   on the same validation examples the same way as the searched schedule (hard top-k masks on
   the relaxed graph, `deos_dsl.search.validate`). Random 25% at the projector and the dense
   model are printed for reference.
Prints one row per schedule: discrete `tokens.mean`, overall and per-family accuracy (%).

    .venv/bin/python benchmarks/bench_search_25.py [--steps N] [--batch 32] [--val 1000] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from rich.console import Console

from deos_dsl.compiler.models import resolve_model
from deos_dsl.embedded.evaluate import evaluate
from deos_dsl.embedded.vqa import FAMILIES, Batch
from deos_dsl.frontend import ir, load_spaces
from deos_dsl.search.constraints import Constraints
from deos_dsl.search.discretise import Discretiser, site_retains
from deos_dsl.search.graph import build_search_graph
from deos_dsl.search.loop import Options, search
from deos_dsl.search.validate import schedule_accuracy
from deos_dsl.tasks import make_task

HERE = Path(__file__).parent
SPACES = load_spaces(HERE / "search_25.deos")
BASELINES = [s for s in SPACES if s.name != "eos_25"] + load_spaces(HERE.parent / "spaces" / "pool2x2.deos")
TASK_MODEL = resolve_model("embedded")
TASK = make_task("embedded", TASK_MODEL)
BUDGET = ir.Constraint(quantity="tokens.mean", op="<=", bound=ir.Num(value=25.0, unit="%"))


def fixed_schedule(space: ir.Space, batch) -> tuple[float, dict[str, float]]:
    """(discrete tokens.mean, accuracy) of a space whose sites are all fixed."""
    budgeted = space.model_copy(update={"constraints": [BUDGET]})
    graph = build_search_graph(budgeted, TASK_MODEL)
    constraints = Constraints.of(budgeted, graph.block_map, graph.flow, None)
    schedule = Discretiser(constraints, graph.modules, site_retains(budgeted, graph.sites), {}).run(0.0)
    settings = schedule.settings({site.name: budgeted.sites[site.site_index] for site in graph.sites})
    (value,) = schedule.values.values()
    assert constraints.limits[0].met(value) and not schedule.moves, f"{space.name} is not within the budget"
    return value, schedule_accuracy(graph, TASK, settings, batch, torch.device("cpu"))


def row(name: str, tokens: float | None, accuracy: dict[str, float]) -> str:
    share = "-" if tokens is None else f"{tokens * 100:.2f}%"
    return f"| {name} | {share} | {accuracy['overall']:.1f} | " + " | ".join(f"{accuracy[f]:.1f}" for f in FAMILIES) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="search steps (default: the space's policy)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--val", type=int, default=1000, help="validation examples")
    parser.add_argument("--out", type=Path, default=Path("runs/search_25"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    (space,) = [s for s in SPACES if s.name == "eos_25"]
    start = time.perf_counter()
    outcome = search(space, "embedded", "embedded", args.out,
                     Options(steps=args.steps, batch_size=args.batch, val_size=args.val, device="cpu"), console=Console(stderr=True))
    seconds = time.perf_counter() - start
    assert outcome.schedule is not None
    (searched,) = outcome.schedule.values.values()
    batch = TASK.eval_batch(args.val, "val")
    rows = [row(f"searched ({outcome.steps_done} steps)", searched, outcome.accuracy["schedule"])]
    for baseline in BASELINES:
        rows.append(row(baseline.name, *fixed_schedule(baseline, batch)))
    model = resolve_model("embedded").model
    rows.append(row("random 25% (projector, reference)", 0.25, evaluate(model, Batch(*batch.args, batch.targets, batch.family), keep_ratio=0.25)))
    rows.append(row("dense (reference)", 1.0, outcome.accuracy["dense"]))
    print(f"search: {seconds:.1f} s on CPU ({torch.get_num_threads()} threads), {outcome.steps_done} steps at batch "
          f"{args.batch}; discrete tokens.mean {searched * 100:.2f}% (budget 25%); validation: first {args.val} val examples")
    print("| schedule | tokens.mean | overall | " + " | ".join(FAMILIES) + " |")
    print("| --- " * (3 + len(FAMILIES)) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
