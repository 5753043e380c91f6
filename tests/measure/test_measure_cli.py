"""`deos evaluate DIR` on a tiny finished search: the summary table, `evaluation.json` and
`evaluation.md`; a missing or corrupt directory is one error line and a hint (exit 1)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from deos_dsl import cli
from deos_dsl.frontend import load_spaces
from deos_dsl.search.loop import Options, search

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "search_25.deos"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), *(Console(file=stream, width=300, color_system=None) for stream in (out, err)))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (space,) = [s for s in load_spaces(BENCHMARK) if s.name == "eos_25"]
    out = tmp_path_factory.mktemp("evaluate") / "search"
    search(space, "embedded", "embedded", out, Options(steps=2, batch_size=4, val_size=0, device="cpu"))
    return out


def test_evaluate_prints_the_table_and_writes_the_evaluation(searched: Path):
    code, out, err = run("evaluate", str(searched), "--examples", "32", "--repeats", "2", "--device", "cpu")
    assert code == 0, err
    for row in ("accuracy (%, 32 test examples)", "GFLOPs / example", "latency ms, B=1", "latency ms, B=32"):
        assert row in out
    assert f"wrote {searched / 'evaluation.json'}, {searched / 'evaluation.md'}" in out
    data = json.loads((searched / "evaluation.json").read_text())
    assert {"space", "model", "tokens_mean", "examples", "device", "threads", "repeats", "dense", "emitted",
            "ideal_speedup", "speedup", "efficiency"} <= data.keys()
    assert (data["space"], data["model"], data["tokens_mean"], data["device"]) == ("eos_25", "embedded", 0.25, "cpu")
    assert data["dense"].keys() == {"accuracy", "flops_per_example", "latency_seconds"}
    assert data["speedup"].keys() == {"1", "32"}
    assert data["emitted"]["flops_per_example"] < data["dense"]["flops_per_example"]
    assert "| GFLOPs / example |" in (searched / "evaluation.md").read_text()


def error_lines(err: str) -> list[str]:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[0].startswith("deos: error: ")
    return lines


def test_a_directory_without_a_search_is_an_error(tmp_path: Path):
    code, _, err = run("evaluate", str(tmp_path))
    assert code == 1
    assert error_lines(err) == [f"deos: error: {tmp_path / 'run.json'} does not exist: {tmp_path} holds no search",
                                "  hint: give the --out directory of a search (run `deos search` first)"]


def test_a_corrupt_schedule_is_an_error(searched: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text((searched / "run.json").read_text())
    (broken / "schedule.json").write_text("{not json")
    code, _, err = run("evaluate", str(broken))
    assert code == 1 and "schedule.json is unreadable or corrupt" in error_lines(err)[0]


def test_few_examples_time_at_most_that_many_and_none_is_a_usage_error(searched: Path, capsys: pytest.CaptureFixture[str]):
    code, out, err = run("evaluate", str(searched), "--examples", "8", "--repeats", "1")
    assert code == 0, err
    assert "latency ms, B=8" in out and "latency ms, B=32" not in out
    code, _, _ = run("evaluate", str(searched), "--examples", "0")
    assert code == 2 and "argument --examples: expected a whole number >= 1, got 0" in capsys.readouterr().err
