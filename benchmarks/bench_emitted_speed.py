"""Benchmark: does the emitted graph run as much faster as the FLOPs it removes allow?

For each finished search directory (default: the study's `docs/study/budget-*/search`, largest budget first;
written by `deos study`), the discrete schedule is compiled into the emitted graph, which
really drops the tokens (`deos_dsl.measure.load_searched`), and measured against the dense
model (`deos_dsl.measure.compare`): FLOPs per example counted by torch's `FlopCounterMode` at
batch 1, the IDEAL speedup dense / emitted FLOPs, the MEASURED speedup dense / emitted median
latency at each batch size (the first B test examples; dense and emitted interleaved, medians
of --repeats rounds), and the efficiency measured / ideal. Prints the device and torch's thread
count, then one markdown table, every row measured in this one run.
Target: efficiency >= 0.8 at 25% of the tokens (`tokens.mean`), batch 32, on the CPU.

    .venv/bin/python benchmarks/bench_emitted_speed.py [DIR ...] [--batch-sizes 1 32] [--repeats 20]
                                                      [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from deos_dsl.errors import DeosError
from deos_dsl.measure import Comparison, Searched, Subject, compare, load_searched
from deos_dsl.measure.render import markdown_table
from deos_dsl.search.ddp import pick_device
from deos_dsl.study.run import search_dirs

STUDY = Path(__file__).resolve().parents[1] / "docs" / "study"


def row(searched: Searched, comparison: Comparison) -> tuple[str, ...]:
    tokens = "-" if searched.tokens_mean is None else f"{searched.tokens_mean * 100:.2f}%"
    gflops = (f"{measured.flops / 1e9:.4f}" for measured in (comparison.dense, comparison.emitted))
    speedups = (f"{comparison.speedup(size):.2f}" for size in comparison.batch_sizes)
    efficiencies = (f"{comparison.efficiency(size):.2f}" for size in comparison.batch_sizes)
    return (os.path.relpath(searched.directory), tokens, *gflops, f"{comparison.ideal_speedup:.2f}", *speedups, *efficiencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="*", type=Path, metavar="DIR",
                        help="finished search directories (default: docs/study/budget-*/search)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], metavar="B")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    directories = args.directories or search_dirs(STUDY)
    if not directories:
        sys.exit(f"no search directories: {STUDY}/budget-*/search does not exist yet; "
                 "run `deos study` first, or pass the --out directories of finished searches")
    rows = []
    try:
        device = pick_device(args.device)
        for directory in directories:
            searched = load_searched(directory, device=str(device))
            batch = searched.task.eval_batch(max(args.batch_sizes), "test")
            dense, emitted = (Subject(lambda size, s=subject: s.at(size).to(device), subject.fixed)
                              for subject in searched.subjects())
            comparison = compare(searched.task, dense, emitted, batch, batch_sizes=tuple(args.batch_sizes),
                                 repeats=args.repeats, device=device)
            rows.append(row(searched, comparison))
    except DeosError as error:
        sys.exit(f"error: {error}")
    print(f"device {device}, {torch.get_num_threads()} thread(s), median of {args.repeats} interleaved rounds, "
          f"first B test examples")
    header = ("search", "tokens.mean", "GFLOPs dense", "GFLOPs emitted", "ideal speedup",
              *(f"speedup B={size}" for size in args.batch_sizes),
              *(f"efficiency B={size}" for size in args.batch_sizes))
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
