"""PNG plots of the study (matplotlib, Agg backend).

`pareto.png`: accuracy vs counted GFLOPs per example, one panel for the overall accuracy and
one per question family; one line per method across the budgets (the searched space drawn
thick and black; baselines solid, corners dashed, random keep dotted, ablations dash-dotted,
20 colours), the dense model as a star. `patterns.png`: the searched operator pattern, one row per
budget and seed and one column per site, each cell coloured by its regime and labelled with the tokens
leaving / entering it (and gamma where it transfers softly). `plot_consistency`: searched
patterns of one space on several data groups (`consistency.py`), tokens and gamma per site.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.patches import Patch  # noqa: E402

from deos_dsl.embedded.vqa import FAMILIES  # noqa: E402
from deos_dsl.frontend.vocab import MIX, OFF, PATTERN_COLOURS  # noqa: E402

from .run import ABLATION, BASELINE, CORNER, DENSE, RANDOM, SEARCH, Entry, budget_label  # noqa: E402


LINE_STYLES = ("-", "--", ":", "-.")  # runs of one data group in plot_consistency
KIND_STYLES = {BASELINE: "-", CORNER: "--", RANDOM: ":", ABLATION: "-."}  # pareto.png: a row's kind at a glance
KIND_MARKERS = {BASELINE: "o", CORNER: "s", RANDOM: "x", ABLATION: "^", SEARCH: "*"}


def plot_pareto(entries: list[Entry], path: Path) -> Path:
    """Write `pareto.png` (module docstring) to `path`."""
    measured = [e for e in entries if e.accuracy is not None and e.gflops is not None]
    methods = list(dict.fromkeys((e.method, e.kind) for e in measured if e.kind != DENSE))
    colours = plt.get_cmap("tab20").colors
    figure, axes = plt.subplots(2, 3, figsize=(15, 9))
    for axis, key in zip(axes.flat, ("overall", *FAMILIES)):
        for index, (method, kind) in enumerate(methods):
            points = sorted((e.gflops, e.accuracy[key]) for e in measured if e.method == method)  # type: ignore[index]
            search = kind == SEARCH
            axis.plot([p[0] for p in points], [p[1] for p in points], marker=KIND_MARKERS.get(kind, "o"),
                      label=f"{method} ({kind})", color="black" if search else colours[index % len(colours)],
                      linestyle=KIND_STYLES.get(kind, "-"), linewidth=3 if search else 1, markersize=7 if search else 4,
                      zorder=3 if search else 2)
        for dense in (e for e in measured if e.kind == DENSE):
            axis.plot([dense.gflops], [dense.accuracy[key]], marker="*", markersize=14, color="black",  # type: ignore[index]
                      linestyle="none", label="dense")
        axis.set_title(f"{key} accuracy" if key == "overall" else f"family: {key}")
        axis.set_xlabel("GFLOPs per example (counted)")
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.legend(*axes.flat[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5),
                  fontsize="small")  # beside the panels: with 20 rows it would cover the data
    figure.savefig(path, dpi=100, format="png", bbox_inches="tight")
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


def plot_consistency(result: dict[str, Any], path: Path) -> Path:
    """Write the pattern comparison of `consistency.consistency` to `path`: per site, the tokens
    leaving it (top, log scale) and the gamma of the open sites (bottom), one line per run, one
    colour per data group (a line style per run in it); a filled marker is an open site, a hollow
    one a closed site."""
    groups = result["groups"]
    figure, (tokens, gammas) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, height_ratios=(2, 1))
    seen: list[str] = []
    for run in result["runs"]:
        colour, style = f"C{groups.index(run['data']) % 10}", LINE_STYLES[seen.count(run["data"]) % len(LINE_STYLES)]
        seen.append(run["data"])
        sites = run["sites"]
        x = list(range(len(sites)))
        tokens.plot(x, [s["leaving"] for s in sites], color=colour, linestyle=style, alpha=0.8, label=run["label"])
        for i, site in enumerate(sites):
            tokens.plot([i], [site["leaving"]], marker="o", color=colour,
                        markerfacecolor=colour if site["active"] else "white", linestyle="none")
            if site["active"]:
                gammas.plot([i], [site["gamma"]], marker="o", color=colour, linestyle="none")
    names = [s["site"] for s in result["runs"][0]["sites"]]
    tokens.set_yscale("log")
    tokens.set_ylabel("tokens leaving the site")
    verdict = "agree" if result["consistent"] else "differ"
    tokens.set_title(f"searched patterns on {len(groups)} data groups: they {verdict} (filled: site open)")
    tokens.legend(fontsize="small")
    tokens.grid(alpha=0.3)
    gammas.set_ylim(-0.05, 1.05)
    gammas.set_ylabel("gamma (open sites)")
    gammas.set_xticks(range(len(names)), names)
    gammas.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)
    return path
