"""PNG plots of the study (matplotlib, Agg backend).

`pareto.png`: accuracy vs counted GFLOPs per example, one panel for the overall accuracy and
one per question family; one line per method across the budgets (the searched space drawn
thick), the dense model as a star. `patterns.png`: the searched operator pattern, one row per
budget and seed and one column per site, each cell coloured by its regime and labelled with the tokens
leaving / entering it (and gamma where it transfers softly).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.patches import Patch  # noqa: E402

from deos_dsl.embedded.vqa import FAMILIES  # noqa: E402
from deos_dsl.frontend.vocab import MIX, OFF, PATTERN_COLOURS  # noqa: E402

from .run import DENSE, SEARCH, Entry, budget_label  # noqa: E402


def plot_pareto(entries: list[Entry], path: Path) -> Path:
    """Write `pareto.png` (module docstring) to `path`."""
    measured = [e for e in entries if e.accuracy is not None and e.gflops is not None]
    methods = list(dict.fromkeys(e.method for e in measured if e.kind != DENSE))
    figure, axes = plt.subplots(2, 3, figsize=(15, 9))
    for axis, key in zip(axes.flat, ("overall", *FAMILIES)):
        for method in methods:
            points = sorted((e.gflops, e.accuracy[key]) for e in measured if e.method == method)  # type: ignore[index]
            search = any(e.kind == SEARCH for e in measured if e.method == method)
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method,
                      linewidth=3 if search else 1, markersize=7 if search else 4, zorder=3 if search else 2)
        for dense in (e for e in measured if e.kind == DENSE):
            axis.plot([dense.gflops], [dense.accuracy[key]], marker="*", markersize=14, color="black",  # type: ignore[index]
                      linestyle="none", label="dense")
        axis.set_title(f"{key} accuracy" if key == "overall" else f"family: {key}")
        axis.set_xlabel("GFLOPs per example (counted)")
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)
    return path


def plot_patterns(entries: list[Entry], path: Path) -> Path:
    """Write `patterns.png` (module docstring) to `path`."""
    searched = sorted((e for e in entries if e.kind == SEARCH and e.sites), key=lambda e: -(e.budget or 0))
    columns = list(dict.fromkeys(site["site"] for e in searched for site in e.sites))
    figure, axis = plt.subplots(figsize=(1.8 * max(len(columns), 1) + 2, 0.8 * max(len(searched), 1) + 1.5))
    for row, entry in enumerate(searched):
        for site in entry.sites:
            column = columns.index(site["site"])
            axis.add_patch(plt.Rectangle((column, row), 1, 1, facecolor=PATTERN_COLOURS[site["regime"]],
                                         edgecolor="white", linewidth=2))
            label = OFF if not site["active"] else f"{site['regime']}\n{site['leaving']}/{site['entering']}"
            if site["regime"] == MIX:
                label += f"\ng={site['gamma']:.2f}"
            axis.text(column + 0.5, row + 0.5, label, ha="center", va="center", fontsize=8)
    axis.set_xlim(0, max(len(columns), 1))
    axis.set_ylim(len(searched), 0)
    axis.set_xticks([c + 0.5 for c in range(len(columns))], columns)
    axis.set_yticks([r + 0.5 for r in range(len(searched))],
                    [f"{budget_label(e.budget or 0)} seed {e.seed}{' (hybrid)' if e.hybrid else ''}" for e in searched])
    axis.set_title("searched operator pattern per budget and seed (regime, tokens leaving / entering)")
    axis.legend(handles=[Patch(color=c, label=r) for r, c in PATTERN_COLOURS.items()], loc="upper left",
                bbox_to_anchor=(1.01, 1), fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)
    return path
