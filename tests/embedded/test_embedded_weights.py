"""The shipped weights: loading, recorded dense accuracy, random-drop sanity, error handling."""

import shutil

import pytest
import torch

from deos_dsl.embedded import default_weights_path, evaluate, fixed_eval_batch, load_default_model, load_model, majority_baseline
from deos_dsl.embedded.loading import load_metadata
from deos_dsl.errors import WeightsError

# The shipped model answers `relation` questions at chance (documented in docs/embedded.md).
LEARNED_FAMILIES = ("count", "attribute", "exist", "compare")


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(2)
    return load_default_model(), load_metadata(default_weights_path())


@pytest.fixture(scope="module")
def test_subset():
    return fixed_eval_batch("test", 1000, seed=0)


def test_default_model_is_frozen_eval_float32_and_small(shipped):
    model, meta = shipped
    assert not model.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    assert default_weights_path().stat().st_size < 8 * 2**20
    assert meta["parameters"] == sum(p.numel() for p in model.parameters())


def test_shipped_weights_reach_recorded_dense_accuracy(shipped, test_subset):
    model, meta = shipped
    acc = evaluate(model, test_subset)
    for family, recorded in meta["test_accuracy"].items():
        assert abs(acc[family] - recorded) <= 1.0, (family, acc[family], recorded)
    baseline = majority_baseline(test_subset)
    assert acc["overall"] >= baseline["overall"] + 20.0
    for family in LEARNED_FAMILIES:
        assert acc[family] >= baseline[family] + 20.0, (family, acc[family], baseline[family])


def test_random_drop_to_25_percent_hurts_clearly(shipped, test_subset):
    model, meta = shipped
    dense = meta["test_accuracy"]
    dropped = evaluate(model, test_subset, keep_ratio=0.25, seed=0)
    assert abs(dropped["overall"] - meta["test_accuracy_random_keep_25"]["overall"]) <= 1.0
    assert dense["overall"] - dropped["overall"] >= 10.0, (dense, dropped)


def test_missing_or_corrupt_weights_raise_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="metadata"):
        load_model(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    shutil.copy(default_weights_path().with_suffix(".json"), corrupt.with_suffix(".json"))
    corrupt.write_bytes(b"not a torch archive")
    with pytest.raises(WeightsError, match="cannot load weights"):
        load_model(corrupt)
