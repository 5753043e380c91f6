"""Validation accuracy of a discrete schedule (or of the dense model) on shapes-VQA batches.

A schedule runs on the RELAXED graph with its discrete modules (`Schedule.settings()`: fixed
gates, `K tokens` keep counts, fixed regime) and every soft top-k temperature at 0: each site
then keeps exactly its K best tokens and hides the others from every later attention (key bias
`NEG_BIAS`, exactly zero attention in float32), which is the hard operator's semantics with
the kept tokens at their original positions: the emitted graph, which really drops them, gives
the same logits (tests/search/test_search_cli.py). It reuses the search's graph: no re-trace.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.sites import site_module
from deos_dsl.embedded.evaluate import accuracy_per_family
from deos_dsl.embedded.vqa import Batch
from deos_dsl.frontend import ir

from .graph import SearchGraph, installed


def discrete_modules(graph: SearchGraph, settings: dict[str, ir.SiteSettings], device: torch.device) -> dict[str, SiteModule]:
    """One fixed SiteModule per site (hard top-k: temperature 0), on `device`."""
    modules = {}
    for site in graph.sites:
        module = site_module(graph.space, site, graph.scores[site.name], settings[site.name]).to(device)
        module.temperature.fill_(0.0)
        modules[site.name] = module
    return modules


@torch.no_grad()
def predictions(model: Callable[..., Any], batch: Batch, device: torch.device, chunk: int = 250) -> torch.Tensor:
    """Answer ids `[B]` of `model` (the relaxed graph, or the model itself) on `batch`, in chunks."""
    answers = []
    for lo in range(0, len(batch.answer), chunk):
        out = model(batch.pixels[lo:lo + chunk].to(device), batch.question[lo:lo + chunk].to(device))
        answers.append((out[0] if isinstance(out, tuple) else out).argmax(-1).cpu())
    return torch.cat(answers)


def schedule_accuracy(graph: SearchGraph, settings: dict[str, ir.SiteSettings], batch: Batch,
                      device: torch.device) -> dict[str, float]:
    """Accuracy (%) per family and overall of the discrete schedule `settings` on `batch`."""
    with installed(graph, discrete_modules(graph, settings, device)):
        return accuracy_per_family(predictions(graph.gm, batch, device), batch)


def dense_accuracy(graph: SearchGraph, batch: Batch, device: torch.device) -> dict[str, float]:
    """Accuracy (%) of the unreduced model on `batch`."""
    return accuracy_per_family(predictions(graph.loaded.model.to(device), batch, device), batch)
