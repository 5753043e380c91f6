"""Median wall-clock latencies of several callables, measured interleaved.

Round `r` runs every runner once, in the given order; a slow moment of a shared machine then
hits all runners alike instead of one of them. Runs happen under `torch.inference_mode()`;
on a CUDA device each run is bracketed by `torch.cuda.synchronize` so that it is timed to
completion, not to the kernel launch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_latencies(runners: dict[str, Callable[[], object]], repeats: int, warmup: int,
                     device: torch.device | str = "cpu") -> dict[str, float]:
    """Median seconds of one call of each runner over `repeats` interleaved rounds, after
    `warmup` untimed rounds; `device` is where the runners compute."""
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    device = torch.device(device)
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
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
    return {name: statistics.median(times) for name, times in seconds.items()}
