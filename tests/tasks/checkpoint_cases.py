"""What the tests of a user's checkpoint share: the CLI run as a user types it, and a search on a
checkpoint and its JSONL data that must learn and land exactly on its `tokens.mean <= 50%`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from deos_dsl import cli


def run(*argv: object) -> tuple[int, str, str]:
    """`deos ARGV` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([str(a) for a in argv], Console(file=out, width=300, color_system=None),
                    Console(file=err, width=300, color_system=None))
    return code, out.getvalue(), err.getvalue()


def search_learns_onto_budget(space: Path, directory: Path, data: Path, out_dir: Path, steps: int = 30) -> None:
    """`deos search SPACE --model DIR --data FILE --out OUT --emit` (batch 8): it succeeds, the
    loss of its last 5 steps is below its first 5's, and the schedule meets its 50% budget exactly."""
    code, _, err = run("search", space, "--model", directory, "--data", data, "--out", out_dir, "--batch", "8",
                       "--val", "16", "--emit")
    assert code == 0, err
    losses = [json.loads(line)["task"] for line in (out_dir / "search.jsonl").read_text().splitlines()]
    assert len(losses) == steps and sum(losses[-5:]) < sum(losses[:5])  # the operator parameters learn
    schedule = json.loads((out_dir / "schedule.json").read_text())
    assert schedule["constraints"]["tokens.mean <= 50%"] == pytest.approx(0.5)  # exactly onto the budget
