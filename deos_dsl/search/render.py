"""Rich output of `deos search`: the discrete schedule, its constraints and the accuracies."""

from __future__ import annotations

import math

from rich.table import Table

from .constraints import Limit
from .discretise import Schedule, corner_name


def _number(value: float) -> str:
    return "inf" if value == math.inf else f"{value:.3g}"


def schedule_table(schedule: Schedule) -> Table:
    """One row per site: gate, tokens entering -> kept, regime values, corner, snapped values."""
    table = Table(title="searched schedule (discrete)", title_justify="left")
    for column in ("site", "gate p", "tokens", "gamma", "tau", "rho", "nu", "corner", "snapped"):
        table.add_column(column)
    for d in schedule.decisions.values():
        tokens = f"{d.entering} -> {d.leaving}" if d.active else f"{d.entering} (off)"
        table.add_row(d.name, f"{d.gate:.3f}", tokens, *(_number(d.regime[k]) for k in ("gamma", "tau", "rho", "nu")),
                      corner_name(d.regime), ", ".join(d.snapped) or "-")
    return table


def constraint_lines(schedule: Schedule, limits: list[Limit]) -> list[str]:
    """`label: value (met / NOT met)` for each limit, on the discrete schedule."""
    return [f"{limit.label}: {limit.show(schedule.values[limit.label])} "
            f"({'met' if limit.met(schedule.values[limit.label]) else 'NOT met'})" for limit in limits]


def accuracy_line(accuracy: dict[str, dict[str, float]], size: int) -> str:
    """Validation accuracy of the schedule and of the dense model, overall and per family."""
    schedule, rounded, dense = accuracy["schedule"], accuracy["rounded"], accuracy["dense"]
    families = " ".join(f"{k} {v:.1f}" for k, v in schedule.items() if k != "overall")
    return (f"validation ({size} val examples): schedule {schedule['overall']:.1f}% "
            f"(before repair {rounded['overall']:.1f}%, dense {dense['overall']:.1f}%); per family: {families}")


def repair_line(schedule: Schedule) -> str:
    """How far repair and fill moved the rounded schedule (`Schedule.repair_size`)."""
    size = schedule.repair_size()
    where = f" ({size['site']})" if size["tokens"] else ""
    flips = ", ".join(size["gate_flips"]) or "none"
    return f"repair: {len(schedule.moves)} move(s), largest keep change {size['tokens']} token(s){where}, gates flipped: {flips}"
