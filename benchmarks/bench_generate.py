"""Benchmark: is the emitted model faster in GENERATION, at batch 1 too?

For each schedule (default: the fixed 25% schedules of `benchmarks/search_25.deos`, plus any
finished search directories given with --search) on the model (default: the shipped HF LLaVA,
`embedded:llava`), the emitted model generates greedily from real prompts (the first B prompts
of the data; default: the shipped benchmark's test split): prefill with the plan, then decode on
the reduced KV cache (`deos_dsl.pipeline.generate`). Against the dense model, measured in this
one run, interleaved (medians of --repeats rounds):
- time to first token (TTFT: prefill and its argmax) and its speedup dense / emitted;
- the prefill FLOPs ratio dense / emitted (counted by `FlopCounterMode` on these prompts) and
  the TTFT speedup as a share of it (target: >= 0.8 on CPU, >= 0.9 on GPU);
- the time per decode step (one token per row) and its speedup, with the KV cache each model
  holds (tokens summed over the decoder layers).

    .venv/bin/python benchmarks/bench_generate.py [--model M] [--data JSONL] [--space FILE --names A B]
        [--search DIR ...] [--batch-sizes 1 8] [--new-tokens 16] [--repeats 10] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from deos_dsl.compiler import LoadedModel
from deos_dsl.errors import DeosError
from deos_dsl.frontend import load_spaces
from deos_dsl.measure import counted_flops, generation_latencies, model_and_prompts
from deos_dsl.measure.render import markdown_table
from deos_dsl.pipeline import compile_emitted, generator_of
from deos_dsl.pipeline.generate import Generator, dense_generator
from deos_dsl.search.result import read_run, read_schedule

HERE = Path(__file__).resolve().parent
FIXED_25 = ("prune_25", "merge_25", "reweight_25", "fastv_25", "pyramiddrop_25", "sparsevlm_25")


def schedules(args: argparse.Namespace) -> list[tuple[str, object, dict | None]]:
    """(name, space, settings) of every schedule measured: the named spaces, then the searches."""
    spaces = {space.name: space for space in load_spaces(args.space)}
    chosen = [(name, spaces[name], None) for name in args.names]
    for directory in args.search:
        _, settings = read_schedule(directory)
        chosen.append((str(directory), read_run(directory).space, settings))
    return chosen


def measure(name: str, size: int, space: object, settings: dict | None, dense: Generator, on_inputs: LoadedModel,
            inputs: dict[str, torch.Tensor], args: argparse.Namespace, device: torch.device) -> tuple[str, ...]:
    """One row: the schedule emitted on `inputs`, against `dense` (module docstring)."""
    emitted = compile_emitted(space, on_inputs, settings)
    generator = generator_of(emitted, on_inputs)
    runs = {"dense": dense, "emitted": generator}
    flops = {label: counted_flops(run.prefill, (), run.prefill.prepare(run.prelude(inputs) if run.prelude else inputs))
             for label, run in runs.items()}
    times = generation_latencies(runs, inputs, args.new_tokens, args.repeats, warmup=2, device=device)
    caches = {label: sum(layer.keys.shape[2] for layer in run.start(inputs)[1].layers) for label, run in runs.items()}
    ratio = flops["dense"] / flops["emitted"]
    ttft = times["dense"].first_token / times["emitted"].first_token
    step = times["dense"].per_step / times["emitted"].per_step
    return (name, str(size), f"{caches['emitted']}/{caches['dense']}", f"{ratio:.2f}",
            f"{times['dense'].first_token * 1e3:.1f}", f"{times['emitted'].first_token * 1e3:.1f}",
            f"{ttft:.2f}", f"{ttft / ratio:.2f}", f"{times['dense'].per_step * 1e3:.2f}",
            f"{times['emitted'].per_step * 1e3:.2f}", f"{step:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:llava")
    parser.add_argument("--data", type=Path, help="a JSONL of prompts (default: the shipped benchmark's test split)")
    parser.add_argument("--space", type=Path, default=HERE / "search_25.deos")
    parser.add_argument("--names", nargs="+", default=list(FIXED_25))
    parser.add_argument("--search", nargs="*", type=Path, default=[], metavar="DIR")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="B")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    rows = []
    try:
        loaded, device, batches = model_and_prompts(args.model, args.device, args.batch_sizes, args.data)
        dense = dense_generator(loaded)
        chosen = schedules(args)
        for size in args.batch_sizes:
            inputs = batches[size]
            on_inputs = dataclasses.replace(loaded, kwargs=loaded.prelude(inputs) if loaded.prelude else inputs)
            for name, space, settings in chosen:
                try:
                    rows.append(measure(name, size, space, settings, dense, on_inputs, inputs, args, device))
                except DeosError as error:  # a schedule this model cannot emit: say so in its row
                    rows.append((name, str(size), f"refused: {str(error).splitlines()[0][:90]}", *["-"] * 8))
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    except DeosError as error:
        sys.exit(f"error: {error}")
    print(f"model {args.model}, device {device}, {torch.get_num_threads()} thread(s), first B prompts, "
          f"{args.new_tokens} new tokens, median of {args.repeats} interleaved rounds")
    header = ("schedule", "B", "KV cache emitted/dense", "prefill FLOPs ratio", "TTFT dense ms", "TTFT emitted ms",
              "TTFT speedup", "TTFT speedup / FLOPs ratio", "decode ms/step dense", "decode ms/step emitted",
              "decode speedup")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
