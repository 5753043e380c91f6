"""Which decoder layer is each fixed corner's best? The study's corners (prune, merge, pool,
reweight) sit at the projector and at ONE decoder layer; this script chooses that layer on
VALIDATION examples, never on the study's test examples.

For each corner form and each decoder layer k of the model, the corner at `decoder.layers[k]`
(the site of `benchmarks/study_llava.deos`'s `corner_<form>_layer0`, moved) is fitted to the
budget by the study's rule (`deos_dsl.study.fit`: scaled keep, or a projector cut in front when
the layer alone cannot reach it), emitted, and measured on the first N validation examples.
Prints one row per form (accuracy per layer, the best layer marked) and writes the numbers to
`--out` as JSON. The chosen layers are written into `study_llava.deos` as `corner_<form>_best`.

    .venv/bin/python benchmarks/corner_layers.py [--budget 25] [--examples 1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deos_dsl.compiler.models import resolve_model  # noqa: E402
from deos_dsl.errors import DeosError  # noqa: E402
from deos_dsl.frontend import loads  # noqa: E402
from deos_dsl.measure import EmittedSizes, hits_and_flops  # noqa: E402
from deos_dsl.pipeline import compile_emitted  # noqa: E402
from deos_dsl.study.fit import fit_baseline  # noqa: E402
from deos_dsl.study.run import failure_reason  # noqa: E402
from deos_dsl.tasks import make_task  # noqa: E402

ROOT = Path(__file__).resolve().parent
OPERATORS = {  # the operator line of each corner at a decoder layer (study_llava.deos)
    "prune": "prune",
    "merge": "merge(proportional: on, affinity: keys)",
    "pool": "pool",
    "reweight": "reweight",
}
CORNER = """import "common.deos"

space corner_{form}_layer{layer} extends baseline {{
  site decoder.layers[{layer}] {{
    activate: on
    retain: 25%
    score: attention(query: text)
    operator: {operator}
  }}
}}
"""
CHUNK = 50  # examples per call of an emitted graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=25.0, help="tokens.mean budget in percent (default 25)")
    parser.add_argument("--examples", type=int, default=1000, help="validation examples (default 1000)")
    parser.add_argument("--model", default="embedded:llava")
    parser.add_argument("--out", type=Path, default=ROOT.parent / "docs" / "study" / "llava" / "corner_layers.json")
    args = parser.parse_args()
    console = Console()
    loaded = resolve_model(args.model)
    task = make_task("embedded", loaded)
    batch = task.eval_batch(args.examples, "val")
    layers = len(loaded.model.model.language_model.layers)
    found: dict[str, dict[str, float | str]] = {}
    for form, operator in OPERATORS.items():
        found[form] = {}
        for layer in range(layers):
            name, text = f"corner_{form}_layer{layer}", CORNER.format(form=form, layer=layer, operator=operator)
            space = next(s for s in loads(text, str(ROOT.parent / "spaces" / "corner.deos")) if s.name == name)
            with console.status(f"{form} at decoder layer {layer}"):
                try:
                    fitted = fit_baseline(space, args.budget / 100, loaded)
                    emitted = compile_emitted(fitted.space, loaded)
                except DeosError as error:
                    found[form][str(layer)] = failure_reason(error)
                    continue
                subject = EmittedSizes(fitted.space, loaded, None, emitted, task).subject()
                hits, _ = hits_and_flops(task, subject, batch, torch.device("cpu"), CHUNK)
            found[form][str(layer)] = task.accuracy(hits, batch)["overall"]
            console.print(f"{form} @ D{layer}: {found[form][str(layer)]:.1f} ({fitted.describe()})", highlight=False)
    table = Table(title=f"corners at each decoder layer: validation accuracy (%), {args.examples} examples, "
                        f"tokens.mean <= {args.budget:g}%", title_justify="left")
    table.add_column("corner")
    for layer in range(layers):
        table.add_column(f"D{layer}", justify="right")
    best = {}
    for form, row in found.items():
        measured = {layer: value for layer, value in row.items() if isinstance(value, float)}
        best[form] = max(measured, key=measured.__getitem__)
        table.add_row(form, *(("[bold]" if layer == best[form] else "") + (f"{value:.1f}" if isinstance(value, float) else "-")
                              for layer, value in row.items()))
    console.print(table)
    console.print("best layer: " + ", ".join(f"{form} D{layer}" for form, layer in best.items()), highlight=False)
    args.out.write_text(json.dumps({"budget": args.budget / 100, "examples": args.examples, "split": "val",
                                    "accuracy": found, "best": best}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
