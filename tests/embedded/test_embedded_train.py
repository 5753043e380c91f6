"""The training script: schedule, and a tiny run that writes loadable weights + metadata."""

import json

import pytest
import torch

from deos_dsl.embedded import load_model
from deos_dsl.embedded.train import lr_at, main


def test_lr_schedule_warms_up_then_decays_to_zero():
    assert lr_at(0, 100, 1e-3, 10) == pytest.approx(1e-4)
    assert lr_at(9, 100, 1e-3, 10) == pytest.approx(1e-3)
    assert lr_at(55, 100, 1e-3, 10) == pytest.approx(5e-4)
    assert lr_at(100, 100, 1e-3, 10) == pytest.approx(0.0, abs=1e-12)


def test_tiny_training_run_is_reproducible_and_loadable(tmp_path):
    args = ["--steps", "2", "--batch-size", "4", "--warmup", "1", "--eval-every", "2",
            "--eval-size", "10", "--test-size", "10"]
    for name in ("a", "b"):
        main(args + ["--out", str(tmp_path / name / "w.pt")])
    a, b = (torch.load(tmp_path / n / "w.pt", weights_only=True) for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "a" / "w.json").read_text())
    assert meta["steps"] == 2 and set(meta["test_accuracy"]) >= {"count", "overall"}
    model = load_model(tmp_path / "a" / "w.pt")
    assert meta["parameters"] == sum(p.numel() for p in model.parameters())
