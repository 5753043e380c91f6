"""Validation accuracy of a discrete schedule (or of the dense model) through the search's task.

A schedule runs on the RELAXED graph with its discrete modules (`Schedule.settings()`: fixed
gates, `K tokens` keep counts, fixed regime) and every soft top-k temperature at 0: each site
then keeps exactly its K best tokens and hides the others from every later attention (key bias
`NEG_BIAS`, exactly zero attention in float32), which is the hard operator's semantics with
the kept tokens at their original positions: the emitted graph, which really drops them, gives
the same logits (tests/search/test_search_cli.py). It reuses the search's graph: no re-trace,
and so the graph's batch size (an exported graph is traced at the search's batch shape).
"""

from __future__ import annotations

import torch
from torch import nn

from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.sites import site_module
from deos_dsl.compiler.trace import SYMBOLIC
from deos_dsl.data import Encoded
from deos_dsl.frontend import ir
from deos_dsl.tasks import Task

from .graph import SearchGraph, installed, sites_off

FREE_CHUNK = 250  # examples per call where the graph takes any batch size


def discrete_modules(graph: SearchGraph, settings: dict[str, ir.SiteSettings], device: torch.device) -> dict[str, SiteModule]:
    """One fixed SiteModule per site (hard top-k: temperature 0), on `device`."""
    modules = {}
    for site in graph.sites:
        module = site_module(graph.space, site, graph.scores[site.name], settings[site.name]).to(device)
        module.temperature.fill_(0.0)
        modules[site.name] = module
    return modules


def _chunk(graph: SearchGraph) -> tuple[int, bool]:
    """How many examples one call of the graph takes, and whether exactly that many."""
    traced = graph.block_map.traced
    if traced.tracer == SYMBOLIC:
        return FREE_CHUNK, False
    first = next(value for value in (*traced.args, *traced.kwargs.values()) if isinstance(value, torch.Tensor))
    return int(first.shape[0]), True


def schedule_accuracy(graph: SearchGraph, task: Task, settings: dict[str, ir.SiteSettings], batch: Encoded,
                      device: torch.device, model: nn.Module | None = None) -> dict[str, float]:
    """Accuracy (%) per family and overall of the discrete schedule `settings` on `batch`
    (through `model`, a split of the relaxed graph, when given: a sharded search's)."""
    chunk, fixed = _chunk(graph)
    with installed(graph, discrete_modules(graph, settings, device), model):
        return task.evaluate(lambda rows: graph.run(rows, model), batch, device, chunk, fixed)


def dense_accuracy(graph: SearchGraph, task: Task, batch: Encoded, device: torch.device,
                   model: nn.Module | None = None) -> dict[str, float]:
    """Accuracy (%) of the unreduced model on `batch`: the model itself, or `model` (a split of
    the relaxed graph: a sharded search's, whose loaded model lent it its weights) with every
    site off."""
    if model is None:
        whole = graph.loaded.model.to(device)
        return task.evaluate(lambda rows: whole(*rows.args, **rows.kwargs), batch, device, FREE_CHUNK)
    chunk, fixed = _chunk(graph)
    with sites_off(graph.modules):
        return task.evaluate(lambda rows: graph.run(rows, model), batch, device, chunk, fixed)
