"""Data parallel on a user's HF checkpoint: two CPU processes (gloo) searching a tiny HF LLaVA
saved to disk on its JSONL data end with the same discrete schedule as one process on the same
global batches (the gate noise is drawn for the global batch, each process takes its rows), with
the operator parameters replicated (bitwise equal on both) and equal to one process's up to the
float rounding of the gradient average:
- DDP (the default): the frozen model replicated;
- `--shard --recompute` (FSDP2, activations recomputed per block): every block's frozen weights sharded over the two processes (each keeps
  half, the loaded model's full copies freed), the dense reference and the validation run through
  the sharded graph with every site off / the schedule installed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor
from tiny_llava import save_tiny_llava, sharpen_and_self_label

from deos_dsl.data import export_embedded
from deos_dsl.frontend import loads
from deos_dsl.search.loop import Options, Search

SPACE = """space llava_dp {
  tokens { reducible: visual  protected: text }
  defaults {
    activate: learned init 0.8
    retain: learned [10%, 100%] init 40%
    score: attention(query: last)
    operator: unified { gamma: learned [0, 1] init 0.2 }
  }
  site projector { score: norm }
  site decoder.layers[1] {}
  constraint tokens.mean <= 50%
  objective { task: kl  align: 1 }
  policy { steps: 6  lr: 0.1 }
}
"""
BATCH, VAL = 8, 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def searched(directory: Path, data: Path, out: Path, shard: bool = False) -> dict[str, object]:
    (space,) = loads(SPACE)
    run = Search(space, str(directory), str(data), out, Options(batch_size=BATCH, val_size=VAL, device="cpu", shard=shard,
                                                                       recompute=shard))
    outcome = run.run()
    assert outcome.schedule is not None
    blocks = [param for param in run.model.parameters() if isinstance(param, DTensor)]
    return {"modules": {name: module.state_dict() for name, module in run.graph.modules.items()},
            "keeps": [decision.keep for decision in outcome.schedule.decisions.values()],
            "gates": [decision.active for decision in outcome.schedule.decisions.values()],
            "accuracy": outcome.accuracy,
            "shards": [(p.to_local().numel(), p.numel()) for p in blocks]}


def worker(rank: int, tmp: Path, port: int, shard: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out = tmp / f"two-{shard}"
    torch.save(searched(tmp / "tiny-llava", tmp / "data" / "data.jsonl", out, shard), tmp / f"rank{rank}-{shard}.pt")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    tmp = tmp_path_factory.mktemp("dp")
    directory = save_tiny_llava(tmp / "tiny-llava")
    data = export_embedded("train", 32, tmp / "data")
    sharpen_and_self_label(directory, data)
    return tmp, searched(directory, data, tmp / "one")


@pytest.mark.parametrize("shard", [False, True], ids=["ddp", "fsdp2"])
def test_two_processes_on_an_hf_checkpoint_end_with_one_processs_schedule(one_process: tuple[Path, dict], shard: bool):
    tmp, one = one_process
    mp.spawn(worker, args=(tmp, free_port(), shard), nprocs=2, join=True)
    first, second = (torch.load(tmp / f"rank{r}-{shard}.pt", weights_only=True) for r in range(2))
    assert first["keeps"] == second["keeps"] == one["keeps"] and first["gates"] == one["gates"]
    for name, state in one["modules"].items():
        for key, value in state.items():
            assert torch.equal(first["modules"][name][key], second["modules"][name][key])  # replicated
            torch.testing.assert_close(first["modules"][name][key], value, atol=1e-4, rtol=1e-4)
    assert first["accuracy"] == one["accuracy"]  # validation of the schedule and of the dense model
    if shard:  # every block weight split in two: each process keeps half (rows padded to an even count)
        assert first["shards"] and all(local <= (whole + 1) // 2 + whole // 16 for local, whole in first["shards"])
        assert sum(local for local, _ in first["shards"]) < 0.6 * sum(whole for _, whole in first["shards"])
    else:
        assert not first["shards"]
