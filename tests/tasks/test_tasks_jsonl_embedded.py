"""The generic data path on the shipped model: the benchmark written out as JSONL (`deos data
export embedded`) reads back into the batches the procedural benchmark makes (pixels within the
PNG's 1/255, the same question, answer and family), and the CLI writes it whole."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from rich.console import Console

from deos_dsl import cli
from deos_dsl.compiler.models import resolve_model
from deos_dsl.data import export_embedded
from deos_dsl.errors import DataError
from deos_dsl.tasks import ClassifierTask, make_task

EMBEDDED = resolve_model("embedded")


def test_exported_examples_read_back_as_the_procedural_ones(tmp_path: Path):
    data = export_embedded("val", 12, tmp_path / "val")
    generic, procedural = make_task(str(data), EMBEDDED), make_task("embedded", EMBEDDED)
    assert isinstance(generic, ClassifierTask)
    mine, theirs = generic.eval_batch(12), procedural.eval_batch(12, "val")
    assert (mine.args[0] - theirs.args[0]).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(mine.args[1], theirs.args[1]) and torch.equal(mine.targets, theirs.targets)
    assert torch.equal(mine.family, theirs.family)
    with torch.no_grad():
        agree = EMBEDDED.model(*mine.args).argmax(-1) == EMBEDDED.model(*theirs.args).argmax(-1)
    assert agree.float().mean() >= 0.9  # 8-bit pixels change an answer rarely


def test_the_cli_exports_and_refuses_an_existing_directory(tmp_path: Path):
    out, err = io.StringIO(), io.StringIO()
    consoles = Console(file=out, width=200), Console(file=err, width=200)
    assert cli.main(["data", "export", "embedded", "--split", "test", "--limit", "3", "--out", str(tmp_path / "d")],
                    *consoles) == 0
    lines = (tmp_path / "d" / "data.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["image"] == "images/test-000000.png"
    assert sorted(p.name for p in (tmp_path / "d" / "images").iterdir()) == [f"test-00000{i}.png" for i in range(3)]
    assert cli.main(["data", "export", "embedded", "--limit", "3", "--out", str(tmp_path / "d")], *consoles) == 1
    assert "already exists" in err.getvalue()


def test_words_the_shipped_model_does_not_know_are_named(tmp_path: Path):
    data = export_embedded("val", 2, tmp_path / "val")
    line = json.loads(data.read_text().splitlines()[0])
    data.write_text(json.dumps({**line, "prompt": "how many zebras ?"}) + "\n")
    try:
        make_task(str(data), EMBEDDED)
    except DataError as error:
        assert f"{data}:1: the shipped model does not know the word(s) `zebras`" in error.message
    else:
        raise AssertionError("an unknown word was accepted")
