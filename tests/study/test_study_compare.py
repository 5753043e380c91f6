"""The study's paired comparison: the bootstrap interval of a mean per-example difference, its
verdict, and the seeds pooled per example."""

from __future__ import annotations

import math

import pytest
import torch

from deos_dsl.study.compare import paired_interval, search_scores, verdict
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
