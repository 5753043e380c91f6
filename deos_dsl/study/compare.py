"""The study's comparison (`comparison.json`): per budget, every row, and the search against the
best other row with a paired 95% confidence interval.

Rows are the study's entries at a budget: the search (its seeds pooled: accuracy = the mean of
the seeds' accuracies, `seeds` = each one's), the baselines, the fixed corners, random keep and
the ablations (each measured once). The best OTHER row is the most accurate baseline, corner or
random row (ablations are variants of the search itself, not competitors). Both are measured on
the same test examples, so the difference is PAIRED: per example, `d_i = s_i - o_i` with `s_i`
the share of the search's seeds that answer example i right and `o_i` whether the other row
does; the interval is the 2.5 / 97.5 percentiles of the mean of `d` over `RESAMPLES` bootstrap
resamples of the examples (a fixed generator: the same file gives the same interval). The
verdict follows the interval: `beats` (it lies above 0), `loses` (below 0), `ties` (it holds 0).
Each measured ablation row also carries `vs_search` (the search minus the ablation: what the
freedom it takes away is worth) and `vs_cheapest` (the ablation minus the best other row that
costs no more GFLOPs than it, None without one: the comparison for an ablation searched under
a FLOPs budget), both paired the same way. `headroom` is the dense model minus the best other
row, paired the same way: where its interval holds 0, no reducer can beat that row with an
interval above 0 without answering better than the unreduced model on the same examples, so a
`ties` there is the ceiling of the benchmark, not of the search. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .run import ABLATION, BASELINE, CORNER, DENSE, RANDOM, SEARCH, Entry

RESAMPLES = 10_000
CHUNK = 500  # bootstrap resamples drawn at a time (memory: CHUNK x examples indices)
COMPETITORS = (BASELINE, CORNER, RANDOM)


def hit_vector(entry: Entry) -> Tensor:
    """`[N]` float64: 1 where `entry` answered the example right (its `hits` string)."""
    return torch.tensor([c == "1" for c in entry.hits], dtype=torch.float64)


def paired_interval(differences: Tensor, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """`(mean, low, high)`: the mean of the per-example `differences [N]` and its 95% percentile
    bootstrap interval over `resamples` resamples of the examples."""
    generator = torch.Generator().manual_seed(seed)
    n = len(differences)
    means = []
    for start in range(0, resamples, CHUNK):
        rows = torch.randint(n, (min(CHUNK, resamples - start), n), generator=generator)
        means.append(differences[rows].mean(dim=1))
    low, high = torch.quantile(torch.cat(means), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(differences.mean()), low, high


def verdict(low: float, high: float) -> str:
    """`beats` / `loses` when the interval excludes 0 on that side, else `ties`."""
    return "beats" if low > 0 else "loses" if high < 0 else "ties"


def _fraction(entry: Entry) -> float | None:
    return None if entry.accuracy is None else entry.accuracy["overall"] / 100


def _row(name: str, kind: str, entries: list[Entry]) -> dict[str, Any]:
    """One row: a method's entries at a budget (several only for the search's seeds)."""
    measured = [e for e in entries if e.accuracy is not None]
    row: dict[str, Any] = {"name": name, "kind": kind, "accuracy": None}
    if measured:
        accuracies = [_fraction(e) for e in measured]
        row.update(accuracy=sum(accuracies) / len(accuracies), tokens_mean=measured[0].tokens_mean,
                   gflops=measured[0].gflops, pattern=measured[0].pattern)
    else:
        row["error"] = entries[0].error
    if kind in (SEARCH, ABLATION):
        row["seeds"] = [_fraction(e) for e in measured]
        row["repair"] = [e.repair for e in measured]
    return row


def search_scores(entries: list[Entry]) -> Tensor:
    """`[N]`: per example, the share of the search's seeds that answer it right."""
    return torch.stack([hit_vector(e) for e in entries]).mean(dim=0)


def _paired(scores: Tensor, other: Entry) -> dict[str, Any]:
    """`scores [N]` (per-example share right) minus the row `other`'s hits: the mean difference,
    its 95% interval and verdict, the number of examples."""
    diff, low, high = paired_interval(scores - hit_vector(other))
    return {"diff": diff, "ci95": [low, high], "verdict": verdict(low, high), "examples": len(other.hits)}


def _best(rows: list[Entry]) -> Entry | None:
    return max(rows, key=lambda e: e.accuracy["overall"], default=None)  # type: ignore[index]


def budget_comparison(entries: list[Entry], budget: float, dense: Entry | None) -> dict[str, Any]:
    """The comparison object of one budget (module docstring)."""
    here = [e for e in entries if e.budget == budget]
    methods = list(dict.fromkeys((e.kind, e.method) for e in here))
    rows = [_row(method, kind, [e for e in here if (e.kind, e.method) == (kind, method)]) for kind, method in methods]
    measured = [e for e in here if e.accuracy is not None and e.hits]
    searched = [e for e in measured if e.kind == SEARCH]
    others = [e for e in measured if e.kind in COMPETITORS]
    best = _best(others)
    result: dict[str, Any] = {"budget": budget, "dense": None if dense is None else _fraction(dense), "rows": rows,
                              "search_vs_best": None, "headroom": None}
    if dense is not None and dense.hits and best is not None:
        result["headroom"] = {"best_other": best.method, **_paired(hit_vector(dense), best)}
    if searched and best is not None:
        result["search_vs_best"] = {"best_other": best.method, "best_kind": best.kind, **_paired(search_scores(searched), best)}
    ablation_rows = {row["name"]: row for row in rows if row["kind"] == ABLATION}
    for ablation in (e for e in measured if e.kind == ABLATION):
        row = ablation_rows[ablation.method]
        if searched:
            row["vs_search"] = _paired(search_scores(searched), ablation)
        cheapest = _best([e for e in others if e.gflops is not None and ablation.gflops is not None
                          and e.gflops <= ablation.gflops])
        row["vs_cheapest"] = None if cheapest is None else \
            {"other": cheapest.method, "other_gflops": cheapest.gflops, **_paired(hit_vector(ablation), cheapest)}
    return result


def comparison_json(entries: list[Entry]) -> list[dict[str, Any]]:
    """`comparison.json`: one object per budget, largest budget first."""
    dense = next((e for e in entries if e.kind == DENSE and e.accuracy is not None), None)
    budgets = sorted({e.budget for e in entries if e.budget is not None}, reverse=True)
    return [budget_comparison(entries, budget, dense) for budget in budgets]
