"""The dense model against its emitted (really reduced) graph: accuracy, FLOPs and latency.

Both run through the task (`deos_dsl.tasks`): its batches are their inputs, its accuracy reads
their outputs. A `Subject` is a model to measure: `at(B)` the module for batch size B (one
module for every B, or one compiled per B for a graph exported at a fixed batch size: `fixed`).
Measured on one evaluation batch:

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
from torch import nn

from deos_dsl.data import Encoded
from deos_dsl.tasks import Task

from .flops import counted_flops
from .latency import median_latencies

MODELS = ("dense", "emitted")
FREE_CHUNK = 250  # examples per call of a module that takes any batch size


@dataclass(frozen=True)
class Subject:
    """A model to measure: `at(batch_size)` gives the module to call with that many examples;
    `fixed`: it takes exactly that many (a graph exported at one batch size)."""

    at: Callable[[int], nn.Module]
    fixed: bool = False

    @staticmethod
    def of(module: nn.Module) -> Subject:
        return Subject(lambda _: module)


def call(module: nn.Module, batch: Encoded) -> Any:
    return module(*batch.args, **batch.kwargs)


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


def hits_and_flops(task: Task, subject: Subject, batch: Encoded, device: torch.device,
                   chunk: int = FREE_CHUNK) -> tuple[torch.Tensor, int]:
    """Whether `subject` answers each example of `batch` right (`[len(batch)]` bool, `chunk`
    examples per call), and its counted FLOPs for one example (the batch's first)."""
    size = chunk if subject.fixed else FREE_CHUNK
    hits = task.hits(partial(call, subject.at(size)), batch, device, size, subject.fixed)
    return hits, counted_flops(partial(call, subject.at(1)), (batch.rows(0, 1).to(device),))


def accuracy_and_flops(task: Task, subject: Subject, batch: Encoded, device: torch.device,
                       chunk: int = FREE_CHUNK) -> tuple[dict[str, float], int]:
    """Accuracy (%) per family and overall of `subject` on `batch`, and its counted FLOPs for
    one example (`hits_and_flops`)."""
    hits, flops = hits_and_flops(task, subject, batch, device, chunk)
    return task.accuracy(hits, batch), flops


def compare(task: Task, dense: Subject, emitted: Subject, batch: Encoded, *, batch_sizes: tuple[int, ...] = (1, 32),
            repeats: int = 20, warmup: int = 3, device: torch.device | str = "cpu",
            stage: Callable[[str], object] = lambda _: None) -> Comparison:
    """Measure `dense` and `emitted` (their modules on `device`) on `batch` (module docstring);
    `batch` needs at least `max(batch_sizes)` examples. `stage(text)` is told what runs now."""
    device = torch.device(device)
    if len(batch) < max(batch_sizes):
        raise ValueError(f"timing at batch size {max(batch_sizes)} needs as many examples, got {len(batch)}")
    subjects = dict(zip(MODELS, (dense, emitted)))
    accuracy, flops = {}, {}
    for name, subject in subjects.items():
        stage(f"accuracy and FLOPs of the {name} model on {len(batch)} examples")
        accuracy[name], flops[name] = accuracy_and_flops(task, subject, batch, device, max(batch_sizes))
    latency: dict[str, dict[int, float]] = {name: {} for name in MODELS}
    for size in batch_sizes:
        stage(f"timing at batch size {size} ({repeats} interleaved rounds)")
        rows = batch.rows(0, size).to(device)
        runners = {name: partial(call, subject.at(size), rows) for name, subject in subjects.items()}
        for name, seconds in median_latencies(runners, repeats, warmup, device).items():
            latency[name][size] = seconds
    dense_measured, emitted_measured = (Measured(accuracy[name], flops[name], latency[name]) for name in MODELS)
    return Comparison(dense_measured, emitted_measured, len(batch), str(device), torch.get_num_threads(), repeats)
