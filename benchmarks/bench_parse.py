"""Parse + validate time per bundled space file (target: < 50 ms for the full EOS space).

The grammar is built once (reported separately as the one-off cost); each file is then
loaded, resolved and validated `--runs` times with the Lark object warm, and the median is
printed. Usage: python benchmarks/bench_parse.py [--runs N] [FILE...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from deos_dsl.frontend.api import check
from deos_dsl.frontend.parser import grammar

SPACES = Path(__file__).resolve().parents[1] / "spaces"
TARGET_MS = 50.0


def median_ms(path: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        _, diagnostics = check(path)
        times.append((time.perf_counter() - start) * 1e3)
        assert not diagnostics, f"{path} has diagnostics"
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    grammar()
    print(f"one-off grammar load (Lark LALR, strict): {(time.perf_counter() - start) * 1e3:8.1f} ms")
    print(f"{'file':<28} {'median parse+validate':>22}   (runs={args.runs})")
    worst = {}
    for path in args.files or sorted(SPACES.glob("*.deos")):
        worst[path.stem] = median_ms(path, args.runs)
        print(f"{path.name:<28} {worst[path.stem]:>19.2f} ms")
    if "eos" in worst:
        verdict = "OK" if worst["eos"] < TARGET_MS else "ABOVE TARGET"
        print(f"EOS space: {worst['eos']:.2f} ms (target < {TARGET_MS:.0f} ms): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
