"""The dense model against its emitted (really reduced) graph: accuracy, FLOPs and latency.

Both take `(pixels [B, 3, H, W], question [B, L])` and answer logits `[B, A]` (the embedded
model and any emitted graph of it accept every batch size). Measured on one evaluation batch:

- accuracy (%) per question family and overall, on the whole batch;
- FLOPs per example, counted (`flops.counted_flops`) at batch 1;
- median latency at each batch size B, on the batch's first B examples, dense and emitted
  interleaved (`latency.median_latencies`).

Derived: the IDEAL speedup `dense FLOPs / emitted FLOPs` (what the removed work allows), the
MEASURED speedup `dense latency / emitted latency` per batch size, and the efficiency
`measured / ideal` (1 when the wall clock falls exactly as the FLOPs do).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from deos_dsl.embedded.evaluate import accuracy_per_family
from deos_dsl.embedded.vqa import Batch
from deos_dsl.search.validate import predictions

from .flops import counted_flops
from .latency import median_latencies

MODELS = ("dense", "emitted")
Model = Callable[[torch.Tensor, torch.Tensor], Any]


@dataclass(frozen=True)
class Measured:
    """One model's figures: `accuracy` per family and `overall` (%), FLOPs per example,
    `latency[B]` median seconds of a forward at batch size B."""

    accuracy: dict[str, float]
    flops: int
    latency: dict[int, float]

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "flops_per_example": self.flops,
                "latency_seconds": {str(size): seconds for size, seconds in self.latency.items()}}


@dataclass(frozen=True)
class Comparison:
    """Dense against emitted on `examples` evaluation examples, timed on `device` with `threads`
    CPU threads as the median of `repeats` interleaved rounds."""

    dense: Measured
    emitted: Measured
    examples: int
    device: str
    threads: int
    repeats: int

    @property
    def batch_sizes(self) -> list[int]:
        return list(self.dense.latency)

    @property
    def ideal_speedup(self) -> float:
        """Dense FLOPs over emitted FLOPs."""
        return self.dense.flops / self.emitted.flops

    def speedup(self, batch_size: int) -> float:
        """Dense latency over emitted latency at `batch_size`."""
        return self.dense.latency[batch_size] / self.emitted.latency[batch_size]

    def efficiency(self, batch_size: int) -> float:
        """Measured speedup over ideal speedup at `batch_size`."""
        return self.speedup(batch_size) / self.ideal_speedup

    def to_json(self) -> dict[str, Any]:
        return {"examples": self.examples, "device": self.device, "threads": self.threads, "repeats": self.repeats,
                "dense": self.dense.to_json(), "emitted": self.emitted.to_json(),
                "ideal_speedup": self.ideal_speedup,
                "speedup": {str(size): self.speedup(size) for size in self.batch_sizes},
                "efficiency": {str(size): self.efficiency(size) for size in self.batch_sizes}}


def _first(batch: Batch, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return batch.pixels[:size].to(device), batch.question[:size].to(device)


def accuracy_and_flops(model: Model, batch: Batch, device: torch.device) -> tuple[dict[str, float], int]:
    """Accuracy (%) per family and overall of `model` on `batch`, and its counted FLOPs for one
    example (the batch's first)."""
    accuracy = accuracy_per_family(predictions(model, batch, device), batch)
    return accuracy, counted_flops(model, _first(batch, 1, device))


def compare(dense: Model, emitted: Model, batch: Batch, *, batch_sizes: tuple[int, ...] = (1, 32),
            repeats: int = 20, warmup: int = 3, device: torch.device | str = "cpu",
            stage: Callable[[str], object] = lambda _: None) -> Comparison:
    """Measure `dense` and `emitted` (modules already on `device`) on `batch` (module docstring);
    `batch` needs at least `max(batch_sizes)` examples. `stage(text)` is told what runs now."""
    device = torch.device(device)
    if len(batch.answer) < max(batch_sizes):
        raise ValueError(f"timing at batch size {max(batch_sizes)} needs as many examples, got {len(batch.answer)}")
    models = dict(zip(MODELS, (dense, emitted)))
    accuracy, flops = {}, {}
    for name, model in models.items():
        stage(f"accuracy and FLOPs of the {name} model on {len(batch.answer)} examples")
        accuracy[name], flops[name] = accuracy_and_flops(model, batch, device)
    latency: dict[str, dict[int, float]] = {name: {} for name in MODELS}
    for size in batch_sizes:
        stage(f"timing at batch size {size} ({repeats} interleaved rounds)")
        inputs = _first(batch, size, device)
        runners = {name: partial(model, *inputs) for name, model in models.items()}
        for name, seconds in median_latencies(runners, repeats, warmup, device).items():
            latency[name][size] = seconds
    dense_measured, emitted_measured = (Measured(accuracy[name], flops[name], latency[name]) for name in MODELS)
    return Comparison(dense_measured, emitted_measured, len(batch.answer), str(device), torch.get_num_threads(),
                      repeats)
