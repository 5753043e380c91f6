"""What `deos emit` prints of an emitted model (one line per site, then the files written), and
what `deos compile` prints of its checks."""

from __future__ import annotations

from pathlib import Path

from .check import Checked
from .emit import Emitted


def emitted_lines(emitted: Emitted, paths: list[Path]) -> list[str]:
    """`site NAME: keeps K/N reducible, tokens IN -> OUT` (or `off`) per site, then `wrote ...`."""
    lines = []
    for name, plan in emitted.plans.items():
        n_in, n_out = emitted.lengths.get(name, ("-", "-"))
        extra = f" + {plan.extra} extra" if plan.extra else ""
        state = f"keeps {plan.keep}/{plan.entering} reducible{extra}, tokens {n_in} -> {n_out}" if plan.active else "off"
        lines.append(f"site {name}: {state}")
    return [*lines, f"wrote {', '.join(str(p) for p in paths)}"]


def checked_lines(checked: Checked) -> list[str]:
    """`cost: dense -> the space's FLOPs per example`, then the emit route and `emitted_lines`."""
    ratio = checked.dense_flops / checked.flops if checked.flops else float("inf")
    return [f"cost: {checked.dense_flops:,} -> {checked.flops:,} FLOPs per example ({ratio:.2f}x fewer)",
            f"emit: ok by {checked.emitted.traced.tracer}", *emitted_lines(checked.emitted, [])[:-1]]
