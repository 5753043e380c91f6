"""The search's readable log (JSON lines) and its live progress display.

`search.jsonl`: one JSON object per step, written by the main process after the step:
`step`, `temperature`, `loss`, `task`, `align`, `penalty`, `constraints` (per limit label: the
expected `value`, the violation `g`, the multiplier `mu`) and `sites` (per site: `gate` p,
`expected_gate` E[z], `keep` c and the regime `gamma`, `tau`, `rho`, `nu`, `theta`), plus
`seconds` since the (re)start. Non-finite numbers are written as the strings "inf" / "-inf" /
"nan" so every line is standard JSON. On resume the lines of steps past the checkpoint (done
after it, then lost with the kill) are dropped atomically before the search continues.

`Progress` is a rich progress bar whose description shows the loss, the worst violation, the
expected `tokens.mean` (when constrained) and the multipliers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from deos_dsl.files import write_text_atomically

LOG = "search.jsonl"


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by its string ("inf", "-inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_json(item) for item in value]
    return value


def read_log(out: Path) -> list[dict[str, Any]]:
    """The records of `out/search.jsonl` (an empty list when there is none)."""
    path = out / LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class JsonLog:
    """Appends one record per step to `out/search.jsonl`."""

    def __init__(self, out: Path, keep_until: int = 0) -> None:
        """Open the log; records of steps `>= keep_until` from an interrupted run are dropped."""
        self.path = out / LOG
        kept = [r for r in read_log(out) if r["step"] < keep_until]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        write_text_atomically(self.path, text)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(finite_json(record)) + "\n")


class Progress:
    """A rich progress bar over the search steps (silent when `console` is None)."""

    def __init__(self, console: Console | None, total: int, done: int) -> None:
        self.bar = None if console is None else RichProgress(
            TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.description}"), console=console, transient=False)
        self.task = None if self.bar is None else self.bar.add_task("", total=total, completed=done)

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def advance(self, record: dict[str, Any]) -> None:
        if self.bar is None or self.task is None:
            return
        constraints = record["constraints"]
        worst = max((c["g"] for c in constraints.values()), default=0.0)
        text = f"loss {record['loss']:.4f}  violation {worst:+.3f}"
        tokens = next((c["value"] for label, c in constraints.items() if label.startswith("tokens.mean")), None)
        if tokens is not None:
            text += f"  E(tokens.mean) {tokens * 100:.1f}%"
        if constraints:
            text += "  mu " + " ".join(f"{c['mu']:.3g}" for c in constraints.values())
        self.bar.update(self.task, advance=1, description=text)
