"""Checkpoints and resume: a search stopped between checkpoints (as a kill leaves it) and
resumed gives the same final result, bit for bit, as an uninterrupted run with the same seed;
a missing, corrupt or foreign checkpoint is a clear error before any compute; the log is
standard JSON lines and the plots are PNG files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deos_dsl.errors import SearchError
from deos_dsl.search.checkpoint import CHECKPOINT, load_checkpoint
from deos_dsl.search.log import read_log
from deos_dsl.search.loop import Options, Outcome, Search, search
from search_cases import load_space, write_space

OPTIONS = Options(batch_size=4, checkpoint_every=2, val_size=20, device="cpu")
REPO = Path(__file__).resolve().parents[2]


def finished(out: Path) -> tuple[dict, dict, list[dict]]:
    """(module states, schedule.json, log records without timings) of a finished search."""
    states = torch.load(out / "result.pt", weights_only=True)["modules"]
    schedule = json.loads((out / "schedule.json").read_text())
    records = [{k: v for k, v in r.items() if k != "seconds"} for r in read_log(out)]
    return states, schedule, records


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Outcome]:
    tmp = tmp_path_factory.mktemp("whole")
    outcome = search(load_space(tmp, steps=5), "embedded", "embedded", tmp / "out", OPTIONS)
    return tmp / "out", outcome


def test_resume_after_a_stop_between_checkpoints_equals_the_uninterrupted_run(uninterrupted, tmp_path: Path):
    whole, _ = uninterrupted
    space, out = load_space(tmp_path, steps=5), tmp_path / "out"
    stopped = search(space, "embedded", "embedded", out, Options(**{**OPTIONS.__dict__, "stop_after": 3}))
    assert stopped.steps_done == 3 and stopped.schedule is None
    assert load_checkpoint(out)["step"] == 2 and len(read_log(out)) == 3  # step 2 ran, then was "killed"
    resumed = search(space, "embedded", "embedded", out, OPTIONS, resume=True)
    assert resumed.steps_done == 5 and resumed.schedule is not None
    states, schedule, records = finished(out)
    states_w, schedule_w, records_w = finished(whole)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert records == records_w
    assert schedule == schedule_w
    for name, state in states_w.items():
        for key, value in state.items():
            assert torch.equal(states[name][key], value), (name, key)


def test_log_is_standard_json_and_plots_are_png(uninterrupted):
    out, outcome = uninterrupted
    text = (out / "search.jsonl").read_text()
    assert "Infinity" not in text and "NaN" not in text
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}")) for line in text.splitlines()]
    first = records[0]
    assert {"step", "temperature", "loss", "task", "align", "penalty", "constraints", "sites", "seconds"} <= set(first)
    assert set(first["sites"]) == set(outcome.schedule.decisions)
    assert {"gate", "expected_gate", "keep", "gamma", "tau", "rho", "nu"} <= set(first["sites"]["projector@0"])
    assert {"value", "g", "mu"} == set(first["constraints"]["tokens.mean <= 25%"])
    for name in ("trajectories.png", "objective.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 10_000


def test_missing_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path: Path):
    space = load_space(tmp_path)
    with pytest.raises(SearchError, match="no checkpoint to resume from"):
        Search(space, "embedded", "embedded", tmp_path / "nothing", OPTIONS, resume=True)
    out = tmp_path / "out"
    out.mkdir()
    cases = [(b"garbage", "corrupt or not a deos checkpoint"), (None, "missing or malformed step, modules")]
    for payload, message in cases:
        if payload is None:
            torch.save({"format": 1, "optimizer": {}}, out / CHECKPOINT)
        else:
            (out / CHECKPOINT).write_bytes(payload)
        with pytest.raises(SearchError, match=message):
            Search(space, "embedded", "embedded", out, OPTIONS, resume=True)


def test_resume_with_other_arguments_is_refused(uninterrupted, tmp_path: Path):
    out, _ = uninterrupted
    with pytest.raises(SearchError, match="other arguments .*: steps differ"):
        Search(load_space(tmp_path, steps=5), "embedded", "embedded", out, Options(**{**OPTIONS.__dict__, "steps": 7}),
               resume=True)


@pytest.mark.slow
def test_sigkill_then_resume_equals_the_uninterrupted_run(uninterrupted, tmp_path: Path):
    """A real kill: the CLI is killed (SIGKILL) after its first checkpoint, then resumed."""
    whole, _ = uninterrupted
    space = write_space(tmp_path, steps=5)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "deos_dsl.cli", "search", str(space), "--model", "embedded", "--data", "embedded",
            "--out", str(out), "--batch", "4", "--checkpoint-every", "2", "--val", "20", "--device", "cpu"]
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and not (out / CHECKPOINT).exists():
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert subprocess.run(argv + ["--resume"], cwd=REPO, capture_output=True).returncode == 0
    states, schedule, records = finished(out)
    states_w, schedule_w, records_w = finished(whole)
    assert records == records_w and schedule == schedule_w
    assert all(torch.equal(states[n][k], v) for n, s in states_w.items() for k, v in s.items())


def test_an_edited_checkpoint_is_refused_before_any_step(uninterrupted, tmp_path: Path):
    """A checkpoint is validated against the run it claims to resume: its step count within the
    run's, its module states those of the run's sites."""
    whole, _ = uninterrupted
    state = torch.load(whole / CHECKPOINT, weights_only=True)
    cases = [({**state, "step": 10**9}, "says 1000000000 steps are done, but this search has 5"),
             ({**state, "modules": {}}, "does not fit this search"),
             ({**state, "step": -1}, "says -1 steps are done")]
    for number, (edited, message) in enumerate(cases):
        out = tmp_path / f"edited{number}"
        shutil.copytree(whole, out)
        torch.save(edited, out / CHECKPOINT)
        with pytest.raises(SearchError, match=message):
            Search(load_space(tmp_path, steps=5), "embedded", "embedded", out, OPTIONS, resume=True).prepare()
