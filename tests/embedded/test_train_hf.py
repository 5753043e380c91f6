"""The training command of the shipped HF LLaVA (`python -m deos_dsl.embedded.train_hf`), run for a
few steps: it writes a folder that plain transformers reloads, records how it was trained, and
the same seed gives the same weights bit for bit (the shipped model's reproducibility rests on it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers as tf
from safetensors.torch import load_file

from deos_dsl.embedded import train_hf

TINY = ["--steps", "3", "--batch-size", "4", "--eval-every", "2", "--eval-size", "10", "--test-size", "10"]


def _train(out: Path, *extra: str) -> dict:
    train_hf.main(["--out", str(out), *TINY, *extra])
    return json.loads((out / "training.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train_hf")
    _train(root / "a")
    _train(root / "b")
    return root / "a", root / "b"


def test_the_same_seed_writes_the_same_weights(twice):
    first, second = (load_file(folder / "model.safetensors") for folder in twice)
    assert first.keys() == second.keys() and all(first[k].equal(second[k]) for k in first)


def test_the_folder_reloads_and_records_its_training(twice):
    folder = twice[0]
    record = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    assert (record["seed"], record["steps"], record["batch_size"], record["precision"]) == (0, 3, 4, "bfloat16")
    assert set(record["test_accuracy"]) == {"count", "attribute", "exist", "relation", "compare", "overall"}
    model = tf.LlavaForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    assert all(p.dtype.is_floating_point and p.dtype == model.dtype for p in model.parameters())
    assert tf.AutoProcessor.from_pretrained(folder, local_files_only=True).tokenizer.eos_token == "</s>"


def test_float32_precision_trains_other_weights(tmp_path: Path, twice):
    record = _train(tmp_path / "fp32", "--precision", "float32")
    assert record["precision"] == "float32"
    bf16, fp32 = load_file(twice[0] / "model.safetensors"), load_file(tmp_path / "fp32" / "model.safetensors")
    assert any(not bf16[k].equal(fp32[k]) for k in bf16)
