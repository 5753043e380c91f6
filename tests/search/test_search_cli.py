"""`deos search` and `deos emit DIR`: a tiny search end to end, the emitted schedule equal to
what validation measured, and clear errors (exit 1, no traceback) before any compute for a
budget the space cannot reach, a data/model mismatch, a missing checkpoint."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console

from deos_dsl import cli
from deos_dsl.compiler.models import resolve_model
from deos_dsl.embedded.vqa import fixed_eval_batch
from deos_dsl.pipeline import compile_emitted
from deos_dsl.search.graph import build_search_graph, installed
from deos_dsl.search.result import read_run, read_schedule
from deos_dsl.search.validate import discrete_modules
from search_cases import space_text, write_space

SPACES = Path(__file__).resolve().parents[2] / "spaces"

SEARCHED = space_text(steps=3)  # eos_25 at 25% for 3 steps: a projector site, four decoder sites


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), Console(file=out, width=300, color_system=None), Console(file=err, width=300, color_system=None))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "space.deos").write_text(SEARCHED)
    code, out, err = run("search", str(tmp / "space.deos"), "--model", "embedded", "--data", "embedded",
                         "--out", str(tmp / "run"), "--batch", "4", "--accumulate", "2", "--recompute", "--val", "40",
                         "--emit")
    assert code == 0, err
    return tmp / "run", out


def test_search_prints_the_schedule_constraints_and_accuracy_then_emits(searched: tuple[Path, str]):
    directory, out = searched
    assert "searched schedule (discrete)" in out and "decoder.layers.0@1" in out
    assert "tokens.mean <= 25%: 25% of the reducible tokens (met)" in out
    assert "validation (40 val examples): schedule " in out and "(before repair " in out and ", dense " in out
    assert re.search(r"repair: \d+ move\(s\), largest keep change \d+ token\(s\)", out)
    assert re.search(r"search of \d+ steps in [\d.]+ s, peak memory [\d.]+ GiB \(process RSS\)", out)
    schedule = json.loads((directory / "schedule.json").read_text())
    plan = json.loads((directory / "emitted" / "plan.json").read_text())
    searched_keeps = [(s["name"], s["active"], s["keep"]) for s in schedule["sites"]]
    assert [(s["name"], s["active"], s["keep"]) for s in plan["sites"]] == searched_keeps
    assert schedule["constraints"]["tokens.mean <= 25%"] <= 0.25
    assert set(schedule["accuracy"]) == {"schedule", "rounded", "dense"}
    assert schedule["expected_met"] == (schedule["expected"]["tokens.mean <= 25%"] <= 0.25 * (1 + 1e-12))
    rounded = {s["name"]: s["keep"] for s in schedule["rounded"]["sites"] if s["active"]}
    largest = max((abs(s["keep"] - rounded[s["name"]]) for s in schedule["sites"] if s["name"] in rounded and s["active"]), default=0)
    assert schedule["repair_size"]["tokens"] == largest
    assert {s["active"] for s in schedule["sites"]} == {True, False}  # closed sites after open ones emit too
    assert f"wrote {directory / 'emitted' / 'model.pt2'}" in out


def test_the_emitted_graph_answers_as_validation_measured(searched: tuple[Path, str]):
    """Validation runs the schedule on the relaxed graph with hard masks; the emitted graph,
    which really drops the tokens, gives the same logits."""
    directory, _ = searched
    saved, settings = read_run(directory), read_schedule(directory)[1]
    loaded = resolve_model("embedded")
    batch = fixed_eval_batch("val", 24)
    emitted = compile_emitted(saved.space, loaded, settings).graph_module
    graph = build_search_graph(saved.space, loaded)
    with torch.no_grad(), installed(graph, discrete_modules(graph, settings, torch.device("cpu"))):
        relaxed = graph.gm(batch.pixels, batch.question)[0]
        hard = emitted(batch.pixels, batch.question)
    torch.testing.assert_close(relaxed, hard, atol=1e-4, rtol=1e-4)


def test_emit_of_a_search_directory_into_a_chosen_folder(searched: tuple[Path, str], tmp_path: Path):
    directory, _ = searched
    code, _, err = run("emit", str(directory), "--out", str(tmp_path / "again"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["model.pt2", "model.py", "plan.json"]
    code, _, err = run("emit", str(directory), "--model", "embedded")
    assert code == 2 and "drop --model" in err


def no_traceback(code: int, err: str, expected: int = 1) -> None:
    assert code == expected, err
    assert "Traceback" not in err and "internal error" not in err


def test_bad_input_is_a_clear_error_before_any_compute(tmp_path: Path):
    space = write_space(tmp_path)
    base = ["search", str(space), "--model", "embedded", "--data", "embedded"]
    # 3 sites kept at >= 60% of what enters them cannot bring the decoder layers to 25% on average
    narrow = tmp_path / "narrow.deos"
    narrow.write_text(space_text(body="  defaults {\n    retain: learned [60%, 100%] init 80%\n  }\n"))
    cases = [
        (["search", str(narrow), "--model", "embedded", "--data", "embedded", "--out", str(tmp_path / "a")],
         ["`tokens.mean <= 25%` is out of reach on model `embedded`", "smallest value this space allows is 33.33%",
          "hint: raise the budget"]),
        (["search", str(space), "--model", "hf:Qwen2Model", "--data", "embedded", "--out", str(tmp_path / "b")],
         ["model `hf:Qwen2Model` does not take shapes-VQA inputs", "hint: data `embedded` needs `--model embedded`"]),
        ([*base, "--out", str(tmp_path / "c"), "--resume"], ["no checkpoint to resume from", "c/checkpoint.pt does not exist"]),
        (["search", str(space), "--model", "embedded", "--data", "embedded:cifar", "--out", str(tmp_path / "d")],
         ["unknown data `embedded:cifar`"]),
        (["emit", str(tmp_path)], ["holds no search"]),
        # the bundled EOS space: its sites leave the vision tower whole, half of the dense FLOPs
        (["search", str(SPACES / "eos.deos"), "--space", "eos", "--model", "embedded", "--data", "embedded",
          "--out", str(tmp_path / "f")], ["`flops <= 0.5 * dense` is out of reach on model `embedded`", "MFLOP"]),
    ]
    for argv, expected in cases:
        code, _, err = run(*argv)
        no_traceback(code, err)
        for text in expected:
            assert text in err, (text, err)
    for name in "abdf":
        assert not (tmp_path / name).exists()  # nothing written
    code, _, err = run("emit", str(space), "--out", str(tmp_path / "e"))
    no_traceback(code, err, expected=2)
    assert "needs --model and --out" in err


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--steps", "0", "argument --steps: expected a whole number >= 1, got 0"),
    ("--steps", "-1", "argument --steps: expected a whole number >= 1, got -1"),
    ("--batch", "0", "argument --batch: expected a whole number >= 1, got 0"),
    ("--checkpoint-every", "0", "argument --checkpoint-every: expected a whole number >= 1, got 0"),
    ("--accumulate", "0", "argument --accumulate: expected a whole number >= 1, got 0"),
    ("--val", "-1", "argument --val: expected a whole number >= 0, got -1"),
    ("--val", "ten", "argument --val: expected a whole number >= 0, got 'ten'"),
])
def test_numbers_out_of_range_are_usage_errors_that_name_the_range(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   flag: str, value: str, expected: str):
    code, _, _ = run("search", str(write_space(tmp_path)), "--model", "embedded", "--out", str(tmp_path / "o"), flag, value)
    err = capsys.readouterr().err  # argparse's own usage message
    no_traceback(code, err, expected=2)
    assert expected in err and not (tmp_path / "o").exists()


def test_a_run_json_naming_code_is_not_executed_without_trust_code(searched: tuple[Path, str], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    """A search directory is data a user may receive; its run.json may name a `module:` model, and
    `deos emit` / `evaluate` would import and run it: only after `--trust-code`."""
    directory, _ = searched
    (tmp_path / "planted.py").write_text("from pathlib import Path\n\ndef factory():\n"
                                         f"    Path({str(tmp_path / 'ran')!r}).write_text('x')\n    raise RuntimeError('planted')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    received = tmp_path / "received"
    received.mkdir()
    run_json = json.loads((directory / "run.json").read_text())
    (received / "run.json").write_text(json.dumps({**run_json, "model": "module:planted:factory"}))
    (received / "schedule.json").write_text((directory / "schedule.json").read_text())
    for argv in (["emit", str(received)], ["evaluate", str(received)]):
        code, _, err = run(*argv)
        no_traceback(code, err)
        assert "names model `module:planted:factory`: loading it imports and runs that Python code" in err
        assert "pass --trust-code" in err and not (tmp_path / "ran").exists()
    code, _, err = run("emit", str(received), "--trust-code")
    no_traceback(code, err)
    assert "factory `planted:factory` raised RuntimeError: planted" in err and (tmp_path / "ran").exists()
