"""Benchmark: one relaxed search step vs one dense forward+backward of the same model.

Relaxed step: `Search.step` on `benchmarks/search_25.deos` (the EOS space: a projector site and
one site per decoder layer, every gate, keep ratio and regime parameter learned, alignment
weight 0.1), i.e. penalty gradient, gate sampling, the relaxed forward, the dense reference
forward for the alignment term, the backward, the optimiser and the dual step.
Dense: forward + backward of the embedded model on the same batch with the cross-entropy loss
and gradients for all its parameters (a training step without the optimiser).
Both are timed interleaved on the same batches (train split, batch 32 by default); the
medians and their ratio are printed. Target (DESIGN 5): relaxed / dense <= 1.6.

    .venv/bin/python benchmarks/bench_search_step.py [--batch 32] [--repeats 15] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from deos_dsl.frontend import load_spaces
from deos_dsl.search.loop import Options, Search

SPACE = Path(__file__).with_name("search_25.deos")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    space = next(s for s in load_spaces(SPACE) if s.name == "eos_25")
    with tempfile.TemporaryDirectory() as tmp:
        search = Search(space, "embedded", "embedded", Path(tmp) / "run",
                        Options(steps=1000, batch_size=args.batch, device="cpu", val_size=0))
        search.prepare()
        dense = copy.deepcopy(search.loaded.model).requires_grad_(True)
        relaxed_times, dense_times = [], []
        for step in range(args.repeats + 2):
            batch = search.spec.train_batch(step, args.batch)
            start = time.perf_counter()
            search.step(step)
            relaxed = time.perf_counter() - start
            start = time.perf_counter()
            F.cross_entropy(dense(batch.pixels, batch.question), batch.answer).backward()
            dense.zero_grad(set_to_none=True)
            if step >= 2:  # two warm-up steps
                relaxed_times.append(relaxed)
                dense_times.append(time.perf_counter() - start)
    r, d = statistics.median(relaxed_times), statistics.median(dense_times)
    print(f"batch {args.batch}, {torch.get_num_threads()} thread(s), median of {args.repeats}")
    print(f"relaxed search step:      {r * 1000:8.1f} ms")
    print(f"dense forward + backward: {d * 1000:8.1f} ms")
    print(f"ratio relaxed / dense:    {r / d:8.2f}  (target <= 1.6)")


if __name__ == "__main__":
    main()
