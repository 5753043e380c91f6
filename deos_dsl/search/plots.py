"""PNG plots of a search's trajectory, drawn from its JSON-lines log (matplotlib, Agg backend).

`trajectories.png`: one panel per quantity (gate p, keep ratio c, gamma, tau on a log axis),
one line per site, over the steps. `objective.png`: the loss terms, the expected constraint
values against their targets (as violations `g`, 0 = on budget) and the multipliers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

SITE_PANELS = (("gate", "gate p = sigmoid(alpha)", "linear"), ("keep", "keep ratio c", "linear"),
               ("gamma", "transfer gamma", "linear"), ("tau", "temperature tau", "log"))


def plot_trajectories(records: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write `trajectories.png` and `objective.png` into `out`; returns their paths."""
    steps = [r["step"] for r in records]
    names = list(records[0]["sites"]) if records else []
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for axis, (key, title, scale) in zip(axes.flat, SITE_PANELS):
        for name in names:
            values = [float(r["sites"][name][key]) for r in records]  # "inf" strings parse too
            if scale == "log" and not all(0 < v < math.inf for v in values):
                continue  # a fixed corner (tau 0 / inf) has no place on a log axis
            axis.plot(steps, values, label=name)
        axis.set_title(title)
        axis.set_yscale(scale)
        axis.set_xlabel("step")
    axes.flat[0].legend(fontsize="small")
    figure.tight_layout()
    paths = [out / "trajectories.png", out / "objective.png"]
    figure.savefig(paths[0], dpi=100)
    plt.close(figure)
    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key in ("loss", "task", "align", "penalty"):
        axes[0].plot(steps, [r[key] for r in records], label=key)
    labels = list(records[0]["constraints"]) if records else []
    for label in labels:
        axes[1].plot(steps, [r["constraints"][label]["g"] for r in records], label=label)
        axes[2].plot(steps, [r["constraints"][label]["mu"] for r in records], label=label)
    axes[1].axhline(0.0, color="black", linewidth=0.8)
    for axis, title in zip(axes, ("loss terms", "violation g (<= 0: within budget)", "multiplier mu")):
        axis.set_title(title)
        axis.set_xlabel("step")
        if axis.lines:
            axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(paths[1], dpi=100)
    plt.close(figure)
    return paths
