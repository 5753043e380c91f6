"""The study's paired comparison: the bootstrap interval of a mean per-example difference, its
verdict, and the seeds pooled per example."""

from __future__ import annotations

import math

import pytest
import torch

from deos_dsl.study.compare import comparison_json, paired_interval, search_scores, verdict
from deos_dsl.study.report import summary_rows, targets
from deos_dsl.study.run import Entry

N = 2000


def coin(p: float, seed: int) -> torch.Tensor:
    return (torch.rand(N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) < p).double()


def test_identical_rows_tie_with_a_zero_interval():
    hits = coin(0.7, 0)
    assert paired_interval(hits - hits) == (0.0, 0.0, 0.0)
    assert verdict(0.0, 0.0) == "ties"


def test_the_interval_has_the_width_of_the_normal_approximation_and_holds_the_mean():
    a, b = coin(0.72, 1), coin(0.70, 2)
    differences = a - b
    mean, low, high = paired_interval(differences)
    assert mean == pytest.approx(float(differences.mean())) and low < mean < high
    half = 1.96 * float(differences.std()) / math.sqrt(N)  # independent: the CLT's 95% half-width
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert paired_interval(differences) == (mean, low, high)  # a fixed generator: the same file, the same interval


def test_pairing_narrows_the_interval_of_correlated_rows():
    base = coin(0.7, 3)
    flips = coin(0.05, 4)
    better = torch.maximum(base, flips)  # answers what `base` does, and a few more
    _, low, high = paired_interval(better - base)
    assert low > 0 and verdict(low, high) == "beats"  # ~3.5 points, every one in the same direction
    _, low_unpaired, high_unpaired = paired_interval(better - coin(0.7, 5))
    assert high_unpaired - low_unpaired > 3 * (high - low)
    assert verdict(-0.03, -0.01) == "loses" and verdict(-0.01, 0.02) == "ties"


def test_the_search_scores_are_the_share_of_seeds_right_per_example():
    seeds = [Entry("s", "search", 0.1, seed, hits=hits) for seed, hits in enumerate(("1100", "1010", "1000"))]
    assert search_scores(seeds).tolist() == pytest.approx([1.0, 1 / 3, 1 / 3, 0.0])


def _row(method: str, kind: str, hits: torch.Tensor, gflops: float, seed: int | None = None) -> Entry:
    return Entry(method, kind, 0.11, seed, tokens_mean=0.1, gflops=gflops, accuracy={"overall": 100 * float(hits.mean())},
                 hits="".join("1" if h else "0" for h in hits.tolist()))


def test_an_ablation_is_compared_with_the_search_and_with_the_best_row_costing_no_more_flops():
    """`vs_search` is the search minus the ablation; `vs_cheapest` picks the most accurate row at
    or under the ablation's GFLOPs, skipping a better but costlier one, and is None without one."""
    search, ablation = coin(0.75, 5), coin(0.6, 6)
    cheap, costly = coin(0.55, 7), coin(0.8, 8)
    entries = [_row("search", "search", search, 0.55, 0), _row("vision", "ablation", ablation, 0.40),
               _row("evit", "baseline", cheap, 0.39), _row("fastv", "baseline", costly, 0.54),
               _row("tome", "baseline", coin(0.3, 9), 0.38)]
    (budget,) = comparison_json(entries)
    row = next(r for r in budget["rows"] if r["name"] == "vision")
    assert row["vs_search"]["diff"] == pytest.approx(float((search - ablation).mean()))
    assert row["vs_cheapest"]["other"] == "evit" and row["vs_cheapest"]["other_gflops"] == 0.39
    assert row["vs_cheapest"]["diff"] == pytest.approx(float((ablation - cheap).mean()))
    assert budget["search_vs_best"]["best_other"] == "fastv"  # the search's own comparison ignores FLOPs
    (alone,) = comparison_json([entries[0], _row("vision", "ablation", ablation, 0.30), entries[3]])
    assert next(r for r in alone["rows"] if r["name"] == "vision")["vs_cheapest"] is None


def test_the_headroom_is_dense_minus_the_best_other_row_and_names_the_budgets_no_reducer_can_win():
    """Where dense itself ties the best other row, the beats target says that budget's ceiling;
    where dense beats it, the budget is not named."""
    dense = coin(0.80, 10)
    close = dense.clone()  # 20 answers differ, 10 each way: a tie
    close[dense.nonzero()[:10, 0]], close[(1 - dense).nonzero()[:10, 0]] = 0.0, 1.0
    far = dense * coin(0.85, 12)  # loses 12 points: dense beats it
    search = dense * coin(0.97, 13)
    entries = [_row("dense", "dense", dense, 1.0)]
    entries[0].budget = None
    for budget, best in ((0.33, close), (0.11, far)):
        entries += [_row("eos", "search", search, 0.5, 0), _row("corner", "corner", best, 0.5),
                    _row("random", "random", coin(0.4, 14), 0.5)]
        for entry in entries[-3:]:
            entry.budget = budget
    high, low = comparison_json(entries)
    for budget, best in ((high, close), (low, far)):
        assert budget["headroom"]["best_other"] == "corner"
        assert budget["headroom"]["diff"] == pytest.approx(float((dense - best).mean()))
    assert high["headroom"]["verdict"] == "ties" and low["headroom"]["verdict"] == "beats"
    beats = targets(high_and_low := [high, low])[0]
    assert beats["value"].endswith("(dense itself does not beat the best other row at 33%)")
    assert summary_rows(high_and_low)[1][5] == _interval_text(low["headroom"])
    assert comparison_json(entries[1:])[0]["headroom"] is None  # no dense row: no headroom


def _interval_text(paired: dict) -> str:
    low, high = paired["ci95"]
    return f"{100 * paired['diff']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
