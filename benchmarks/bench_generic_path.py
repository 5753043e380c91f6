"""The generic data path reproduces the procedural one: the same search (eos_25 at 25% tokens, the
same steps, batch and seed) on the shipped model, once on `--data embedded` and once on the
benchmark exported as JSONL (`deos data export embedded`: PNG images, text prompts, the same
examples), each emitted schedule then measured on the same exported test examples.

    .venv/bin/python benchmarks/bench_generic_path.py [--steps 150] [--batch 32] [--test 1000]

Prints both searches' discrete tokens.mean and test accuracy (overall and per family) and the
difference; one seed per path, so differences of about the test set's standard error
(~1.4 points at 1000 examples) are noise.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from deos_dsl.compiler.models import resolve_model
from deos_dsl.data import export_embedded
from deos_dsl.embedded.vqa import FAMILIES
from deos_dsl.frontend import load_spaces
from deos_dsl.measure import Subject, accuracy_and_flops, load_searched
from deos_dsl.search.loop import Options, search
from deos_dsl.tasks import make_task

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    (space,) = [s for s in load_spaces(HERE / "search_25.deos") if s.name == "eos_25"]
    work = Path(tempfile.mkdtemp(prefix="deos-generic-"))
    try:
        started = time.perf_counter()
        train = export_embedded("train", args.steps * args.batch, work / "train")
        test = export_embedded("test", args.test, work / "test")
        print(f"exported {args.steps * args.batch} train and {args.test} test examples in "
              f"{time.perf_counter() - started:.0f} s")
        loaded = resolve_model("embedded")
        task = make_task(str(test), loaded)
        batch = task.eval_batch(args.test)
        rows = []
        for name, data in (("procedural (--data embedded)", "embedded"), ("generic (--data train JSONL)", str(train))):
            started = time.perf_counter()
            out = work / name.split()[0]
            search(space, "embedded", data, out, Options(steps=args.steps, batch_size=args.batch, val_size=0, device="cpu"),
                   console=Console(stderr=True))
            searched = load_searched(out, loaded, data=str(test))
            accuracy, _ = accuracy_and_flops(task, Subject.of(searched.emitted.module), batch, torch.device("cpu"))
            rows.append((name, searched.tokens_mean, accuracy, time.perf_counter() - started))
        print(f"| path | tokens.mean | test overall | {' | '.join(FAMILIES)} | seconds |")
        print("| --- " * (4 + len(FAMILIES)) + "|")
        for name, tokens, accuracy, seconds in rows:
            print(f"| {name} | {tokens * 100:.2f}% | {accuracy['overall']:.1f} | "
                  + " | ".join(f"{accuracy[f]:.1f}" for f in FAMILIES) + f" | {seconds:.0f} |")
        print(f"difference (generic - procedural), overall: {rows[1][2]['overall'] - rows[0][2]['overall']:+.1f} points")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
