"""Data-parallel search: two CPU processes (gloo) each take half of every batch (as two
micro-batches, `--accumulate 2`); the operator parameters, the multipliers and the schedule
stay replicated, and only rank 0 writes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from deos_dsl.search.loop import Options, Search
from deos_dsl.frontend import load_spaces
from search_cases import write_space

REPO = Path(__file__).resolve().parents[2]

STEPS = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker(rank: int, tmp: Path, port: int) -> None:
    """One rank: reads the space the parent wrote (never writes it: two writers race)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    (space,) = load_spaces(tmp / "space.deos")
    # two micro-batches per process: DDP synchronises the last one only (`ddp.no_sync`)
    run = Search(space, "embedded", "embedded", tmp / "out", Options(batch_size=4, val_size=0, device="cpu", accumulate=2))
    initial = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in run.graph.modules.items()}
    outcome = run.run()
    assert outcome.schedule is not None
    torch.save({"main": outcome.main, "steps": outcome.steps_done, "initial": initial, "mu": run.lagrangian.mu,
                "final": {name: m.state_dict() for name, m in run.graph.modules.items()},
                "keeps": [d.keep for d in outcome.schedule.decisions.values()]}, tmp / f"rank{rank}.pt")


def test_two_cpu_processes_keep_the_operator_parameters_replicated(tmp_path: Path):
    write_space(tmp_path, steps=STEPS)
    mp.spawn(worker, args=(tmp_path, free_port()), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert (first["main"], second["main"]) == (True, False) and first["steps"] == second["steps"] == STEPS
    moved = False
    for name, state in first["final"].items():
        for key, value in state.items():
            assert torch.equal(value, second["final"][name][key]), (name, key)  # bitwise replicated
            moved |= not torch.equal(value, first["initial"][name][key])
    assert moved
    assert torch.equal(first["mu"], second["mu"]) and float(first["mu"][0]) > 0
    assert first["keeps"] == second["keeps"]
    assert len((tmp_path / "out" / "search.jsonl").read_text().splitlines()) == STEPS  # one writer


@pytest.mark.slow
def test_torchrun_cli_search_with_two_processes(tmp_path: Path):
    """`torchrun --nproc-per-node 2 -m deos_dsl.cli search ...` as a user runs it (gloo on CPU)."""
    space = write_space(tmp_path, steps=STEPS)
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", f"--master-port={free_port()}",
            "-m", "deos_dsl.cli", "search", str(space), "--model", "embedded", "--data", "embedded",
            "--out", str(tmp_path / "out"), "--batch", "4", "--val", "20", "--device", "cpu"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("searched schedule (discrete)") == 1  # printed by rank 0 only
    assert (tmp_path / "out" / "schedule.json").exists()
