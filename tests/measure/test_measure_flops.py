"""`counted_flops` against hand counts, and `median_latencies` on a fake clock: interleaved
rounds, warm-up not timed, inference mode."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deos_dsl.measure import counted_flops, median_latencies

M, K, N = 5, 7, 3


def test_a_linear_layer_counts_two_m_k_n():
    linear = nn.Linear(K, N)
    assert counted_flops(linear, (torch.randn(M, K),)) == 2 * M * K * N


def test_a_matmul_with_keyword_arguments_counts_two_m_k_n():
    weight = torch.randn(K, N)
    assert counted_flops(lambda x, *, w: x @ w, (torch.randn(M, K),), {"w": weight}) == 2 * M * K * N


def test_cpu_attention_counts_both_products():
    """`F.scaled_dot_product_attention` on the CPU (a kernel torch's counter does not know)."""
    batch, heads, queries, keys, depth = 2, 4, 6, 9, 8
    q = torch.randn(batch, heads, queries, depth)
    k, v = torch.randn(batch, heads, keys, depth), torch.randn(batch, heads, keys, depth)
    expected = 2 * (2 * batch * heads * queries * keys * depth)
    assert counted_flops(F.scaled_dot_product_attention, (q, k, v)) == expected


def test_latencies_are_medians_of_interleaved_rounds_after_warmup(monkeypatch: pytest.MonkeyPatch):
    clock, calls = [0.0], []

    def runner(name: str, seconds: list[float]):
        def run() -> None:
            calls.append((name, torch.is_inference_mode_enabled()))
            clock[0] += seconds.pop(0)
        return run

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    runners = {"fast": runner("fast", [100.0, 1.0, 2.0, 9.0]), "slow": runner("slow", [100.0, 5.0, 3.0, 4.0])}
    medians = median_latencies(runners, repeats=3, warmup=1)
    assert medians == {"fast": 2.0, "slow": 4.0}
    assert calls == [("fast", True), ("slow", True)] * 4


def test_latencies_need_a_timed_round():
    with pytest.raises(ValueError, match="repeats"):
        median_latencies({"noop": lambda: None}, repeats=0, warmup=1)
