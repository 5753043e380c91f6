"""The study's results as JSON (`results.json`) and markdown (`table.md`), and its verdicts.

Per budget the search (its seeds pooled) is compared with the best other row by the paired 95%
interval of `compare.py`: the verdict (`beats` / `ties` / `loses`) is the interval's, never the
bare difference. `targets()` states the targets of the study's issue on the budgets that were run:
the search beats the best other row at 11% and at two other budgets, it never loses, and it
keeps >= 97% of dense accuracy at 33% and >= 93% at 11%.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from deos_dsl.embedded.vqa import FAMILIES

from .notes import notes_markdown
from .run import ABLATION, DENSE, SEARCH, Entry, budget_label

SHARE_FLOORS = {0.33: 97.0, 0.11: 93.0}  # budget -> % of dense accuracy the search keeps at least


def _search(budget: dict[str, Any]) -> dict[str, Any] | None:
    return next((row for row in budget["rows"] if row["kind"] == SEARCH and row["accuracy"] is not None), None)


def targets(comparison: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets that the run budgets allow checking (module docstring)."""
    verdicts = {b["budget"]: b["search_vs_best"]["verdict"] for b in comparison if b["search_vs_best"]}
    found = []
    if 0.11 in verdicts:
        beaten = [budget_label(b) for b, v in verdicts.items() if v == "beats"]
        ceiling = [budget_label(b["budget"]) for b in comparison
                   if b["headroom"] is not None and b["headroom"]["verdict"] != "beats"]
        value = (", ".join(beaten) or "none") + \
            (f" (dense itself does not beat the best other row at {', '.join(ceiling)})" if ceiling else "")
        found.append({"target": "the search beats the best other row (paired 95% CI above 0) at 11% and at 2 other budgets",
                      "value": value, "met": verdicts[0.11] == "beats" and len(beaten) >= 3})
    if verdicts:
        lost = [budget_label(b) for b, v in verdicts.items() if v == "loses"]
        found.append({"target": "no budget where the search loses (CI below 0)", "value": ", ".join(lost) or "none",
                      "met": not lost})
    for budget in comparison:
        floor, row = SHARE_FLOORS.get(budget["budget"]), _search(budget)
        if floor is not None and row is not None and budget["dense"]:
            share = 100 * row["accuracy"] / budget["dense"]
            found.append({"target": f"the search keeps >= {floor:g}% of dense accuracy at {budget_label(budget['budget'])}",
                          "value": f"{share:.1f}% of dense", "met": share >= floor})
    return found


def results_json(entries: list[Entry], meta: dict[str, Any], comparison: list[dict[str, Any]]) -> dict[str, Any]:
    return {"meta": meta, "entries": [e.to_json() for e in entries], "targets": targets(comparison)}


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}"


def _row(entry: Entry) -> str:
    budget = "-" if entry.budget is None else budget_label(entry.budget)
    name = f"**{entry.method}**" if entry.kind == SEARCH else entry.method
    if entry.seed:
        name += f" (seed +{entry.seed})"
    if entry.accuracy is None:
        cells = ["-"] * (3 + len(FAMILIES)) + [f"not run: {entry.error}"]
    else:
        tokens = "-" if entry.tokens_mean is None else f"{entry.tokens_mean * 100:.2f}%"
        cells = [tokens, _number(entry.gflops, 4), _number(entry.accuracy["overall"])]
        cells += [_number(entry.accuracy[f]) for f in FAMILIES]
        cells.append(entry.setting if not entry.sites or entry.kind not in (SEARCH, ABLATION) else f"{entry.setting}; {entry.pattern}")
    return "| " + " | ".join([budget, entry.kind, name, *cells]) + " |"


def table_markdown(entries: list[Entry], meta: dict[str, Any], comparison: list[dict[str, Any]]) -> str:
    """The whole study as markdown: the targets, the per-budget verdicts, then every row."""
    lines = [f"# Study: `{meta['search_space']}` on `{meta['model']}`", "",
             f"Accuracy (%) on the first {meta['examples']} test examples, measured on each EMITTED graph "
             "(tokens really dropped); GFLOPs of one example counted by `FlopCounterMode`; tokens.mean = "
             "layer-averaged share of the visual tokens entering the decoder layers (discrete). "
             f"The search ran {meta.get('seeds', 1)} seed(s) per budget (accuracy: their mean, spread: min-max); "
             "`diff [95% CI]`: the search minus the best other row (baseline, corner or random keep), paired over the "
             "same examples, bootstrap interval; the verdict is the interval's. `dense minus best row`: the same "
             "interval for the unreduced model; where it holds 0, beating that row would take answering better "
             "than dense.",
             f"Command: `{meta['command']}`", ""]
    found = targets(comparison)
    if found:
        lines += ["| target | measured | met |", "| --- | --- | --- |"]
        lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'no'} |" for t in found]
        lines.append("")
    lines += ["Operator pattern (first seed): site (`P` projector, `Dk` decoder layer k, `Vk` vision layer k), regime "
              "(`mix(g=..)`: a soft transfer, 0 < gamma < 1), span tokens leaving / entering.", "",
              "| budget | search (seeds) | best other row | diff [95% CI] | verdict | dense minus best row [95% CI] | "
              "searched operator pattern |", "| --- " * 7 + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in summary_rows(comparison)]
    lines += ["", "Overall accuracy (%) per row and budget (`-`: the row cannot meet that budget):", ""]
    lines += accuracy_matrix(comparison)
    ablations = ablation_rows(comparison)
    if ablations:
        lines += ["", "Ablations (one seed each): the search minus the ablation (what the freedom it takes away is "
                  "worth), and the ablation against the best other row that costs no more GFLOPs (for an ablation "
                  "searched under a FLOPs budget), both paired 95% intervals:", "",
                  "| budget | ablation | accuracy | GFLOPs | search minus it [95% CI] | best row at <= its GFLOPs | "
                  "it minus that row [95% CI] |", "| --- " * 7 + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in ablations]
    started = warm_rows(entries)
    if started:
        lines += ["", f"Warm start (`--warm {meta.get('warm')}`): per seed, the validation accuracy of each candidate "
                  "(the row it starts from, the search from it, the search from the space's inits) decides the search "
                  "row; the test accuracies of all three are shown, but decide nothing:", "",
                  "| budget | seed | kept | validation: start / warm / cold | test: start / warm / cold |",
                  "| --- " * 5 + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in started]
    lines += ["", "| budget | kind | schedule | tokens.mean | GFLOPs | overall | " + " | ".join(FAMILIES) + " | how |",
              "| --- " * (7 + len(FAMILIES)) + "|"]
    lines += [_row(e) for e in entries]
    notes = notes_markdown(list(meta["baselines"]))
    lines += ["", *notes] if notes else []
    return "\n".join(lines) + "\n"


def warm_rows(entries: list[Entry]) -> list[list[str]]:
    """Per warm study search row: budget, seed, the candidate kept, and the candidates'
    validation and test accuracies (`run.Study._search_row`)."""
    def three(accuracies: dict[str, float]) -> str:
        return " / ".join(_number(accuracies.get(name)) for name in ("start", "warm", "cold"))

    return [[budget_label(e.budget), f"+{e.seed}", e.start["kept"], three(e.start["val"]), three(e.start["test"])]
            for e in entries if e.kind == SEARCH and e.start and e.budget is not None]


def accuracy_matrix(comparison: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: one per row name (the search first, in bold), one column per budget."""
    names = list(dict.fromkeys((row["kind"], row["name"]) for budget in comparison for row in budget["rows"]))
    names.sort(key=lambda kind_name: kind_name[0] != SEARCH)
    cell = {(row["name"], budget["budget"]): _percent(row["accuracy"]) for budget in comparison for row in budget["rows"]}
    lines = ["| row | kind | " + " | ".join(budget_label(b["budget"]) for b in comparison) + " |",
             "| --- " * (2 + len(comparison)) + "|"]
    for kind, name in names:
        shown = f"**{name}**" if kind == SEARCH else name
        lines.append(f"| {shown} | {kind} | " + " | ".join(cell.get((name, b["budget"]), "-") for b in comparison) + " |")
    dense = next((b["dense"] for b in comparison if b["dense"] is not None), None)
    if dense is not None:
        lines.append(f"| dense (100%) | {DENSE} | " + " | ".join(_percent(dense) for _ in comparison) + " |")
    return lines


def summary_rows(comparison: list[dict[str, Any]]) -> list[list[str]]:
    """Per budget (largest first): budget, search (seeds), best other row, diff [CI], verdict,
    headroom (dense minus the best other row [CI]), pattern."""
    rows = []
    for budget in comparison:
        search, versus = _search(budget), budget["search_vs_best"]
        seeds = "-" if search is None else \
            f"{_percent(search['accuracy'])} ({_percent(min(search['seeds']))}-{_percent(max(search['seeds']))})"
        headroom = "-" if budget["headroom"] is None else _interval(budget["headroom"])
        if versus is None:
            rows.append([budget_label(budget["budget"]), seeds, "-", "-", "-", headroom,
                         "-" if search is None else search["pattern"]])
            continue
        best = next(row for row in budget["rows"] if row["name"] == versus["best_other"])
        rows.append([budget_label(budget["budget"]), seeds, f"{versus['best_other']} ({best['kind']}) {_percent(best['accuracy'])}",
                     _interval(versus), versus["verdict"], headroom,
                     "-" if search is None else search["pattern"]])
    return rows


def _interval(paired: dict[str, Any]) -> str:
    """A paired difference in points with its interval: `+0.4 [-1.1, +1.9]`."""
    low, high = paired["ci95"]
    return f"{100 * paired['diff']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def ablation_rows(comparison: list[dict[str, Any]]) -> list[list[str]]:
    """Per budget and measured ablation: budget, name, accuracy, GFLOPs, the search minus it,
    the best other row at no more GFLOPs and the ablation minus that row (`compare.py`)."""
    rows = []
    for budget in comparison:
        for row in budget["rows"]:
            if row["kind"] != ABLATION or row["accuracy"] is None:
                continue
            versus, cheapest = row.get("vs_search"), row.get("vs_cheapest")
            rows.append([budget_label(budget["budget"]), row["name"], _percent(row["accuracy"]), _number(row["gflops"], 3),
                         "-" if versus is None else f"{_interval(versus)} {versus['verdict']}",
                         "-" if cheapest is None else f"{cheapest['other']} ({_number(cheapest['other_gflops'], 3)})",
                         "-" if cheapest is None else f"{_interval(cheapest)} {cheapest['verdict']}"])
    return rows


def summary_table(comparison: list[dict[str, Any]]) -> Table:
    """The per-budget verdicts as a rich table (what `deos study` prints at the end)."""
    table = Table(title="study: search vs best other row (overall accuracy %, test subset, paired 95% CI)",
                  title_justify="left")
    for column in ("budget", "search (seeds)", "best other row", "diff [95% CI]", "verdict", "dense minus best row [95% CI]",
                   "searched operator pattern"):
        table.add_column(column)
    for cells in summary_rows(comparison):
        table.add_row(*cells)
    return table


def target_lines(comparison: list[dict[str, Any]]) -> list[str]:
    return [f"target: {t['target']}: {t['value']} ({'met' if t['met'] else 'NOT met'})" for t in targets(comparison)]
