"""The study's results as JSON (`results.json`) and markdown (`table.md`), and its verdicts.

Per budget the searched schedule is compared with the BEST baseline that ran at that budget
(overall accuracy on the test subset); `targets()` states the issue's two accuracy targets
(searched >= best baseline + 2 points at 11%; searched >= 97% of dense at 33%) when those
budgets were run.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from deos_dsl.embedded.vqa import FAMILIES

from .notes import notes_markdown
from .run import BASELINE, DENSE, SEARCH, Entry, budget_label


def _at(entries: list[Entry], budget: float, kind: str) -> list[Entry]:
    return [e for e in entries if e.budget == budget and e.kind == kind and e.accuracy is not None]


def budget_summary(entries: list[Entry], budget: float) -> dict[str, Any]:
    """Searched vs best baseline at `budget`: accuracies, margin, pattern, hybrid."""
    searched = _at(entries, budget, SEARCH)
    baselines = sorted(_at(entries, budget, BASELINE), key=lambda e: -e.accuracy["overall"])  # type: ignore[index]
    summary: dict[str, Any] = {"budget": budget, "searched": None, "best_baseline": None, "margin": None}
    if searched:
        s = searched[0]
        summary.update(searched=s.accuracy["overall"], pattern=s.pattern, hybrid=s.hybrid)  # type: ignore[index]
    if baselines:
        summary.update(best_baseline=baselines[0].method, best_baseline_accuracy=baselines[0].accuracy["overall"])  # type: ignore[index]
    if searched and baselines:
        summary["margin"] = summary["searched"] - summary["best_baseline_accuracy"]
    return summary


def targets(entries: list[Entry]) -> list[dict[str, Any]]:
    """The issue's accuracy targets that the run budgets allow checking."""
    dense = next((e.accuracy["overall"] for e in entries if e.kind == DENSE and e.accuracy), None)
    budgets = {e.budget for e in entries if e.budget is not None}
    found = []
    if 0.11 in budgets:
        margin = budget_summary(entries, 0.11)["margin"]
        found.append({"target": "searched beats the best baseline by >= 2 points at 11% tokens",
                      "value": margin, "met": margin is not None and margin >= 2.0, "unit": "points"})
    if 0.33 in budgets and dense:
        searched = budget_summary(entries, 0.33)["searched"]
        share = None if searched is None else 100 * searched / dense
        found.append({"target": "searched keeps >= 97% of dense accuracy at 33% tokens",
                      "value": share, "met": share is not None and share >= 97.0, "unit": "% of dense"})
    return found


def results_json(entries: list[Entry], meta: dict[str, Any]) -> dict[str, Any]:
    budgets = sorted({e.budget for e in entries if e.budget is not None}, reverse=True)
    return {"meta": meta, "entries": [e.to_json() for e in entries],
            "budgets": [budget_summary(entries, b) for b in budgets], "targets": targets(entries)}


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(entry: Entry) -> str:
    budget = "-" if entry.budget is None else budget_label(entry.budget)
    name = f"**{entry.method}**" if entry.kind == SEARCH else entry.method
    if entry.accuracy is None:
        cells = ["-"] * (3 + len(FAMILIES)) + [f"not run: {entry.error}"]
    else:
        tokens = "-" if entry.tokens_mean is None else f"{entry.tokens_mean * 100:.2f}%"
        cells = [tokens, _number(entry.gflops, 4), _number(entry.accuracy["overall"])]
        cells += [_number(entry.accuracy[f]) for f in FAMILIES]
        cells.append(entry.setting if entry.kind != SEARCH else f"{entry.setting}; {entry.pattern}")
    return "| " + " | ".join([budget, name, *cells]) + " |"


def table_markdown(entries: list[Entry], meta: dict[str, Any]) -> str:
    """The whole study as markdown: the targets, the searched patterns, then every row."""
    lines = [f"# Baseline study: `{meta['search_space']}` vs {len(meta['baselines'])} baselines on `{meta['model']}`", "",
             f"Accuracy (%) on the first {meta['examples']} test examples, measured on each EMITTED graph "
             "(tokens really dropped); GFLOPs of one example counted by `FlopCounterMode`; tokens.mean = "
             "layer-averaged share of the visual tokens entering the decoder layers (discrete).",
             f"Command: `{meta['command']}`", ""]
    found = targets(entries)
    if found:
        lines += ["| target | measured | met |", "| --- | --- | --- |"]
        lines += [f"| {t['target']} | {_number(t['value'])} {t['unit']} | {'yes' if t['met'] else 'no'} |" for t in found]
        lines.append("")
    lines += ["Operator pattern: site (`P` projector, `Dk` decoder layer k, `Vk` vision layer k), regime "
              "(`mix(g=..)`: a soft transfer, 0 < gamma < 1), span tokens leaving / entering.", "",
              "| budget | searched | best baseline | margin | hybrid (0 < gamma < 1) | searched operator pattern |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(cells) + " |" for cells in summary_rows(entries)]
    lines += ["", "Overall accuracy (%) per schedule and budget (`-`: the baseline cannot meet that budget):", ""]
    lines += accuracy_matrix(entries)
    lines += ["", "| budget | schedule | tokens.mean | GFLOPs | overall | " + " | ".join(FAMILIES) + " | how |",
              "| --- " * (6 + len(FAMILIES)) + "|"]
    lines += [_row(e) for e in entries]
    notes = notes_markdown(list(meta["baselines"]))
    lines += ["", *notes] if notes else []
    return "\n".join(lines) + "\n"


def accuracy_matrix(entries: list[Entry]) -> list[str]:
    """Markdown rows: one per schedule (the searched one first, in bold), one column per budget."""
    budgets = sorted({e.budget for e in entries if e.budget is not None}, reverse=True)
    methods = sorted(dict.fromkeys((e.kind, e.method) for e in entries if e.kind != DENSE), key=lambda km: km[0] != SEARCH)
    cell = {(e.method, e.budget): _number(e.accuracy["overall"]) if e.accuracy else "-" for e in entries}
    lines = ["| schedule | " + " | ".join(budget_label(b) for b in budgets) + " |", "| --- " * (1 + len(budgets)) + "|"]
    for kind, method in methods:
        name = f"**{method}**" if kind == SEARCH else method
        lines.append(f"| {name} | " + " | ".join(cell.get((method, b), "-") for b in budgets) + " |")
    dense = next((e for e in entries if e.kind == DENSE and e.accuracy), None)
    if dense is not None:
        lines.append("| dense (100%) | " + " | ".join(_number(dense.accuracy["overall"]) for _ in budgets) + " |")  # type: ignore[index]
    return lines


def summary_rows(entries: list[Entry]) -> list[list[str]]:
    """Per budget (largest first): budget, searched, best baseline, margin, hybrid, pattern."""
    rows = []
    for budget in sorted({e.budget for e in entries if e.budget is not None}, reverse=True):
        summary = budget_summary(entries, budget)
        best = "-" if summary["best_baseline"] is None else f"{summary['best_baseline']} {summary['best_baseline_accuracy']:.1f}"
        hybrid = "-" if summary["searched"] is None else ("yes" if summary["hybrid"] else "no")
        rows.append([budget_label(budget), _number(summary["searched"]), best, _number(summary["margin"]), hybrid,
                     summary.get("pattern", "-")])
    return rows


def summary_table(entries: list[Entry]) -> Table:
    """The per-budget verdicts as a rich table (what `deos study` prints at the end)."""
    table = Table(title="study: searched vs best baseline (overall accuracy %, test subset)", title_justify="left")
    for column in ("budget", "searched", "best baseline", "margin", "hybrid", "searched operator pattern"):
        table.add_column(column)
    for cells in summary_rows(entries):
        table.add_row(*cells)
    return table


def target_lines(entries: list[Entry]) -> list[str]:
    return [f"target: {t['target']}: {_number(t['value'])} {t['unit']} ({'met' if t['met'] else 'NOT met'})"
            for t in targets(entries)]
