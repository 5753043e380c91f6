"""Median wall-clock latencies of several callables (or generators: time to first token and per
decode step), measured interleaved.

Round `r` runs every runner once, in the given order; a slow moment of a shared machine then
hits all runners alike instead of one of them. Runs happen under `torch.inference_mode()`;
on a CUDA device each run is bracketed by `torch.cuda.synchronize` so that it is timed to
completion, not to the kernel launch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from deos_dsl.pipeline import Generator


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """What waits for `device` to finish its queued work (CUDA), or does nothing (CPU)."""
    device = torch.device(device)
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def median_latencies(runners: dict[str, Callable[[], object]], repeats: int, warmup: int,
                     device: torch.device | str = "cpu") -> dict[str, float]:
    """Median seconds of one call of each runner over `repeats` interleaved rounds, after
    `warmup` untimed rounds; `device` is where the runners compute."""
    return {name: statistics.median(times) for name, times in interleaved_seconds(runners, repeats, warmup, device).items()}


def interleaved_seconds(runners: dict[str, Callable[[], object]], repeats: int, warmup: int,
                        device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """The seconds of each call of each runner, `repeats` interleaved rounds after `warmup`
    untimed ones (a noisy machine: read the fastest call as well as the median)."""
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    synchronize = synchronizer(device)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for name, run in runners.items():
                synchronize()
                start = time.perf_counter()
                run()
                synchronize()
                if round_ >= warmup:
                    seconds[name].append(time.perf_counter() - start)
    return seconds


@dataclass(frozen=True)
class GenerationTimes:
    """Median seconds to the first token (prefill and its argmax) and per decode step (one new
    token for every row of the batch)."""

    first_token: float
    per_step: float


def generation_latencies(generators: dict[str, Generator], inputs: dict[str, Any], new_tokens: int, repeats: int,
                         warmup: int, device: torch.device | str = "cpu") -> dict[str, GenerationTimes]:
    """Interleaved medians (module docstring) of each generator's time to first token on
    `inputs` and of its `new_tokens - 1` following greedy decode steps (no end token)."""
    if repeats < 1 or new_tokens < 2:
        raise ValueError(f"need repeats >= 1 and new_tokens >= 2, got {repeats} and {new_tokens}")
    synchronize = synchronizer(device)
    first: dict[str, list[float]] = {name: [] for name in generators}
    steps: dict[str, list[float]] = {name: [] for name in generators}
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for name, generator in generators.items():
                synchronize()
                start = time.perf_counter()
                logits, cache, rows, positions = generator.start(inputs)
                token = logits.argmax(-1)
                synchronize()
                prefilled = time.perf_counter()
                for _ in range(new_tokens - 1):
                    token = generator.step(token, cache, rows, positions).argmax(-1)
                    positions = positions + 1
                synchronize()
                if round_ >= warmup:
                    first[name].append(prefilled - start)
                    steps[name].append((time.perf_counter() - prefilled) / (new_tokens - 1))
    return {name: GenerationTimes(statistics.median(first[name]), statistics.median(steps[name])) for name in generators}
