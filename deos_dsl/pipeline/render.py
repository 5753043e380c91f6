"""What `deos emit` prints of an emitted model (one line per site, then the files written), what
`deos compile` prints of its checks, and what `deos generate` prints of its answers."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .check import Checked
from .emit import Emitted
from .generate import Answers


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


def answers_table(answers: Answers) -> Table:
    """One row per prompt: where, the expected answer, the emitted (and dense) model's."""
    table = Table(title="greedy answers")
    for column in ("example", "expected", "emitted", *(("dense",) if answers.dense is not None else ())):
        table.add_column(column)
    dense = answers.dense or [None] * len(answers.emitted)
    for where, expected, emitted, baseline in zip(answers.where, answers.expected, answers.emitted, dense):
        table.add_row(where, expected or "-", emitted, *((baseline,) if answers.dense is not None else ()))
    return table


def _starts(texts: list[str], expected: list[str | None]) -> str:
    """`k/n` answers that start with the expected one (case-insensitive), over the answered."""
    pairs = [(text.lower(), want.lower()) for text, want in zip(texts, expected) if want is not None]
    return f"{sum(text.startswith(want) for text, want in pairs)}/{len(pairs)}"


def answers_lines(answers: Answers) -> list[str]:
    """Agreement with the expected answers and with the dense model, and the KV cache per layer."""
    lines = []
    if any(want is not None for want in answers.expected):
        dense = f"; dense {_starts(answers.dense, answers.expected)}" if answers.dense is not None else ""
        lines.append(f"answers starting with the expected one: emitted {_starts(answers.emitted, answers.expected)}{dense}")
    if answers.dense is not None:
        same = sum(a == b for a, b in zip(answers.emitted, answers.dense))
        lines.append(f"emitted answers identical to dense: {same}/{len(answers.emitted)}")
    cache = f"KV cache tokens per decoder layer: emitted {answers.cache} ({sum(answers.cache)} in all)"
    if answers.dense_cache:
        cache += f", dense {answers.dense_cache} ({sum(answers.cache) / sum(answers.dense_cache):.0%} of dense)"
    return [*lines, cache]
