"""The study end to end on a tiny plan: one budget, two baselines, a 2-step search, 50 test
examples. Checks the files, the budgets met, the dense row against an independent evaluation,
the reuse of a finished search and the refusal of a foreign one, and the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from deos_dsl.cli import main
from deos_dsl.compiler.models import resolve_model
from deos_dsl.embedded.evaluate import evaluate
from deos_dsl.embedded.vqa import FAMILIES, fixed_eval_batch
from deos_dsl.errors import StudyError
from deos_dsl.frontend import load_spaces
from deos_dsl.search.loop import Options
from deos_dsl.study import StudyPlan, run_study, study_spaces
from deos_dsl.study.run import search_dir

ROOT = Path(__file__).resolve().parents[2]
STUDY_SPACE = ROOT / "benchmarks" / "study.deos"
FASTV, TOME = ROOT / "spaces" / "fastv.deos", ROOT / "spaces" / "tome.deos"
EXAMPLES = 50
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _plan(out: Path, steps: int = 2) -> StudyPlan:
    spaces = load_spaces(STUDY_SPACE) + load_spaces(FASTV) + load_spaces(TOME)
    search_space, baselines = study_spaces(spaces, "eos_study")
    options = Options(steps=steps, batch_size=4, val_size=0, device="cpu")
    return StudyPlan(search_space, baselines, (0.5,), "embedded", "embedded", out, options, EXAMPLES)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list[Path]]:
    out = tmp_path_factory.mktemp("study")
    entries, paths = run_study(_plan(out), Console(file=open("/dev/null", "w")), "test")
    return out, entries, paths


def test_study_spaces_picks_the_search_space_and_the_fixed_baselines() -> None:
    spaces = load_spaces(STUDY_SPACE) + load_spaces(ROOT / "spaces" / "sparsevlm.deos") + load_spaces(ROOT / "spaces" / "eos.deos")
    search_space, baselines = study_spaces(spaces, "eos_study")
    assert search_space.name == "eos_study"
    assert [b.name for b in baselines] == ["sparsevlm_prune", "sparsevlm"]  # not `baseline` (no site), not eos_* (learned)
    with pytest.raises(StudyError, match="no space `eos_stdy`"):
        study_spaces(spaces, "eos_stdy")
    with pytest.raises(StudyError, match="learns nothing"):
        study_spaces(spaces, "sparsevlm_prune")


def test_every_schedule_meets_the_budget_and_is_measured(study) -> None:
    out, entries, _ = study
    assert [(e.kind, e.method) for e in entries] == [("dense", "dense"), ("search", "eos_study"),
                                                       ("baseline", "fastv"), ("baseline", "tome")]
    dense = entries[0]
    for entry in entries[1:]:
        assert entry.error is None, entry.error
        assert entry.tokens_mean <= 0.5
        assert set(entry.accuracy) == {"overall", *FAMILIES}
        assert 0 < entry.gflops < dense.gflops  # fewer tokens, fewer counted FLOPs
        assert any(site["active"] for site in entry.sites)
    assert search_dir(out, 0.5).joinpath("schedule.json").is_file()


def test_dense_row_matches_an_independent_evaluation(study) -> None:
    _, entries, _ = study
    expected = evaluate(resolve_model("embedded").model, fixed_eval_batch(size=EXAMPLES))
    assert entries[0].accuracy == pytest.approx(expected)


def test_files_are_written_and_consistent(study) -> None:
    out, entries, paths = study
    assert [p.name for p in paths] == ["results.json", "table.md", "pareto.png", "patterns.png"]
    results = json.loads((out / "results.json").read_text())
    assert [e["method"] for e in results["entries"]] == [e.method for e in entries]
    assert results["budgets"][0]["budget"] == 0.5
    best = max(entries[2:], key=lambda e: e.accuracy["overall"])
    assert results["budgets"][0]["best_baseline"] == best.method
    assert results["budgets"][0]["margin"] == pytest.approx(entries[1].accuracy["overall"] - best.accuracy["overall"])
    table = (out / "table.md").read_text()
    for entry in entries[1:]:
        assert f"{entry.accuracy['overall']:.1f}" in table and entry.method in table
    searched, dense = entries[1].accuracy["overall"], entries[0].accuracy["overall"]
    assert f"| **eos_study** | {searched:.1f} |" in table and f"| dense (100%) | {dense:.1f} |" in table  # the matrix
    for name in ("pareto.png", "patterns.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_a_finished_search_is_reused_and_a_foreign_one_refused(study, tmp_path: Path) -> None:
    out, entries, _ = study
    log = tmp_path / "log.txt"
    with log.open("w") as stream:
        again, _ = run_study(_plan(out), Console(file=stream, width=200), "test")
    assert "reusing the finished search" in log.read_text()
    assert again[1].accuracy == entries[1].accuracy
    with pytest.raises(StudyError, match="other arguments"):
        plan = _plan(out)
        run_study(StudyPlan(plan.search_space, plan.baselines, plan.budgets, plan.model, "embedded:shapes_vqa[:64]",
                            out, plan.options, EXAMPLES), Console(file=open("/dev/null", "w")), "test")


def test_cli_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--model", "embedded", "--data", "embedded", "--out", str(tmp_path / "o")]
    assert main(["study", str(STUDY_SPACE), str(FASTV), "--search", "nope", *common]) == 1
    assert "no space `nope`" in capsys.readouterr().err
    assert main(["study", str(STUDY_SPACE), str(FASTV), "--search", "eos_study", "--budgets", "120", *common]) == 2
    assert "between 0 and 100" in capsys.readouterr().err
    assert main(["study", str(STUDY_SPACE), str(FASTV), "--search", "eos_study", "--examples", "0", *common]) == 2
    assert "argument --examples: expected a whole number >= 1, got 0" in capsys.readouterr().err
    assert main(["study", str(tmp_path / "missing.deos"), "--search", "eos_study", *common]) == 1
    assert not (tmp_path / "o").exists()  # nothing written on bad input
