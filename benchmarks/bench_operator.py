"""Micro-benchmark: the HARD unified operator vs one transformer block of the same width.

Operator: hidden-norm scores + `reduce_tokens` at 25% keep with a real transfer
(gamma=0.5, tau=0.2, rho=0.1, proportional sizes), affinity on the hidden states.
Block: pre-norm attention (fused `scaled_dot_product_attention`, 16 heads) + 4x GELU MLP.
Target: operator < 10% of one block at N=576, D=1024 on CPU.  Prints medians and ratios.

    .venv/bin/python benchmarks/bench_operator.py [--batch 1 8] [--threads 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from deos_dsl.ops import Regime, hidden_norm, reduce_tokens


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.out(att)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=576)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--keep", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    block = Block(args.dim, heads=16).eval()
    regime = Regime(gamma=0.5, tau=0.2, rho=0.1, proportional=True)
    print(f"CPU, {args.threads} thread(s), N={args.tokens}, D={args.dim}, keep={args.keep}, median of {args.repeats}")
    worst = 0.0
    with torch.inference_mode():
        for b in args.batch:
            x = torch.randn(b, args.tokens, args.dim)
            op = median_seconds(lambda: reduce_tokens(x, range(args.tokens), hidden_norm(x), keep=args.keep, regime=regime), args.repeats)
            blk = median_seconds(lambda: block(x), args.repeats)
            worst = max(worst, op / blk)
            print(f"B={b:<3d} operator {op * 1e3:8.2f} ms   block {blk * 1e3:8.2f} ms   ratio {100 * op / blk:5.1f}%")
    print(f"target < 10% of a block: {'MET' if worst < 0.10 else 'NOT MET'} (worst ratio {100 * worst:.1f}%)")


if __name__ == "__main__":
    main()
