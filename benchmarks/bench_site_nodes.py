"""Benchmark: how many operations does one emitted site cost, per corner of the operator?

Each corner's hard site (`deos_dsl.compiler.hard_site.HardSite`: a span of 144 image tokens at
position 5 of a 150-token stream of width 64, keeping 36) is exported alone with
`torch.export`, and the nodes of its graph that compute (`call_function`) are counted, with
its fastest and median latency at batch 1 and 32 (--repeats interleaved rounds; the fastest
call is the steadier figure on a noisy machine). The table in docs/compiler.md was
written by this script (before: the commit that introduced it, run with the previous
`HardSite`).

    .venv/bin/python benchmarks/bench_site_nodes.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from deos_dsl.compiler.hard_site import HardSite, SitePlan
from deos_dsl.measure.latency import interleaved_seconds
from deos_dsl.measure.render import markdown_table

SPAN, LENGTH, WIDTH, KEEP = (5, 149), 150, 64, 36
# corner -> (gamma, tau, rho, proportional)
CORNERS = {
    "prune": (0.0, 1.0, 0.0, False),
    "merge (tau -> 0)": (1.0, 0.01, 0.0, False),
    "pool (tau = inf)": (1.0, math.inf, 0.0, False),
    "reweight (rho = 1)": (0.0, 1.0, 1.0, False),
    "unified, proportional": (0.5, 0.5, 0.5, True),
}


def site(gamma: float, tau: float, rho: float, proportional: bool) -> HardSite:
    plan = SitePlan("site", True, 1.0, SPAN, KEEP, gamma, tau, None, rho, 1.0, proportional, None)
    return HardSite(plan).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    rows = []
    for corner, values in CORNERS.items():
        module = site(*values)
        inputs = {size: (torch.randn(size, LENGTH, WIDTH, generator=generator), torch.rand(size, LENGTH, generator=generator))
                  for size in (1, 32)}
        program = torch.export.export(module, inputs[1], strict=False)
        nodes = sum(node.op == "call_function" for node in program.graph.nodes)
        times = interleaved_seconds({size: (lambda s=size: module(*inputs[s])) for size in inputs}, args.repeats, warmup=10)
        rows.append((corner, str(nodes), *(f"{min(times[size]) * 1e6:.0f} / {statistics.median(times[size]) * 1e6:.0f}"
                                           for size in (1, 32))))
    print(f"one hard site: {SPAN[1] - SPAN[0]} reducible of {LENGTH} tokens, width {WIDTH}, keep {KEEP}; "
          f"{torch.get_num_threads()} thread(s), fastest / median of {args.repeats} calls")
    print(markdown_table(("corner", "graph nodes (exported)", "us at B=1", "us at B=32"), rows))


if __name__ == "__main__":
    main()
