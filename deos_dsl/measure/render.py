"""A `Comparison` as one summary table: rich for the terminal, markdown for files.

Rows: overall accuracy, GFLOPs per example, latency at each batch size; columns: dense,
emitted and their ratio (accuracy: the difference in points; FLOPs: the ideal speedup;
latency: the measured speedup and its efficiency). The markdown adds the per-family accuracy.
"""

from __future__ import annotations

from rich.table import Table

from .compare import Comparison

HEADER = ("", "dense", "emitted", "ratio")


def summary_rows(comparison: Comparison) -> list[tuple[str, str, str, str]]:
    """The rows of the summary table, as text (module docstring)."""
    dense, emitted = comparison.dense, comparison.emitted
    accuracy = (dense.accuracy["overall"], emitted.accuracy["overall"])
    rows = [(f"accuracy (%, {comparison.examples} test examples)", f"{accuracy[0]:.1f}", f"{accuracy[1]:.1f}",
             f"{accuracy[1] - accuracy[0]:+.1f} points"),
            ("GFLOPs / example", f"{dense.flops / 1e9:.4f}", f"{emitted.flops / 1e9:.4f}",
             f"{comparison.ideal_speedup:.2f}x (ideal speedup)")]
    for size in comparison.batch_sizes:
        rows.append((f"latency ms, B={size}", f"{dense.latency[size] * 1e3:.2f}", f"{emitted.latency[size] * 1e3:.2f}",
                     f"{comparison.speedup(size):.2f}x (efficiency {comparison.efficiency(size):.2f})"))
    return rows


def setting(comparison: Comparison) -> str:
    """Where and how the latencies were measured."""
    return (f"device {comparison.device}, {comparison.threads} CPU thread(s), "
            f"median of {comparison.repeats} interleaved rounds")


def comparison_table(comparison: Comparison, title: str = "dense vs emitted") -> Table:
    """The summary as a rich table."""
    table = Table(title=title, title_justify="left", caption=setting(comparison), caption_justify="left")
    for column in HEADER:
        table.add_column(column, justify="left" if not column else "right")
    for row in summary_rows(comparison):
        table.add_row(*row)
    return table


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A markdown table."""
    lines = [header, tuple("---" for _ in header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def comparison_markdown(comparison: Comparison, title: str = "dense vs emitted") -> str:
    """The summary and the per-family accuracy as a markdown document."""
    families = [(family, f"{comparison.dense.accuracy[family]:.1f}", f"{comparison.emitted.accuracy[family]:.1f}")
                for family in comparison.dense.accuracy]
    return (f"# {title}\n\n{setting(comparison)}.\n\n{markdown_table(HEADER, summary_rows(comparison))}\n\n"
            f"## Accuracy per family (%)\n\n{markdown_table(('family', 'dense', 'emitted'), families)}\n")
