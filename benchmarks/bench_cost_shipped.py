"""Cost figures of the shipped HF LLaVA (`embedded:llava`): the dense FLOPs of each part, one
decoder layer's formula, and every bundled space's reduced / dense ratio on it, each checked in
the same run against FlopCounterMode on the emitted model (tokens really removed).

    .venv/bin/python benchmarks/bench_cost_shipped.py [--no-check]

At the model's example inputs (`resolve_model`): batch 2, the processor's prompt of 149 tokens
(144 image tokens). FLOPs are 2*M*K*N per product, attention included; `counted` is
FlopCounterMode on the emitted model (`deos_dsl.measure.flops.counted_flops`, fused attention
counted like the CUDA kernels), less the vision tower's dead code when the transformers release
runs it (measured: `Cost.dead`). `time` is trace + bind + cost.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path

import sympy
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deos_dsl.compiler.models import LLAVA, resolve_model  # noqa: E402
from deos_dsl.cost.report import human  # noqa: E402
from deos_dsl.frontend import load_spaces  # noqa: E402
from deos_dsl.measure.flops import counted_flops  # noqa: E402
from deos_dsl.pipeline import compile_emitted, cost_space  # noqa: E402

SPACES = Path(__file__).resolve().parents[1] / "spaces"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-check", action="store_true", help="skip the emitted models and FlopCounterMode")
    args = parser.parse_args()
    console = Console()
    loaded = resolve_model(LLAVA)
    table = Table(title=f"bundled spaces on {LLAVA} (batch {loaded.kwargs['input_ids'].shape[0]}, "
                        f"{loaded.kwargs['input_ids'].shape[1]} tokens)")
    for column in ("space", "active sites", "reduced", "dense", "ratio", "counted (emitted)", "time"):
        table.add_column(column, justify="left" if column in ("space", "active sites") else "right")
    parts: dict[str, int] = {}
    for path in sorted(SPACES.glob("*.deos")):
        for space in load_spaces(path):
            start = time.perf_counter()
            cost, schedule = cost_space(space, loaded)
            seconds = time.perf_counter() - start
            dense, reduced = cost.dense_flops(), cost.flops(schedule)
            if not parts:
                totals: dict[str, int] = defaultdict(int)
                for group in cost.groups:
                    totals[group.role or "outside"] += cost.evaluate(group.total(), cost.point(None))
                parts = dict(totals)
                layer = next(g for g in cost.groups if g.role == "decoder")
            check = "-"
            if not args.no_check:
                dead = cost.evaluate(sympy.Add(*cost.dead.values()), cost.point(schedule))
                emitted = compile_emitted(space, loaded)
                measured = counted_flops(emitted.module, emitted.args, emitted.kwargs) - dead
                check = f"{human(measured)} {'==' if measured == reduced else '!='}"
            active = sum(point.active for point in schedule.values())
            table.add_row(f"{path.name}:{space.name}", f"{active}/{len(schedule)}", human(reduced), human(dense),
                          f"{100 * reduced / dense:.1f}%", check, f"{seconds:.1f}s")
    whole = sum(parts.values())
    console.print("dense FLOPs by part: " + ", ".join(f"{role} {human(v)} ({100 * v / whole:.1f}%)"
                                                      for role, v in parts.items()) + f"; whole {human(whole)}")
    console.print(f"one decoder layer ({layer.name}), length {layer.length}: {sympy.expand(layer.total())}")
    console.print(table)


if __name__ == "__main__":
    main()
