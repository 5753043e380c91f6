"""The study end to end on a tiny plan: one budget, two baselines, a corner, random keep, a 2-step
search with two seeds and one ablation, 50 test examples. Checks the files, the budgets met, the
dense row against an independent evaluation, `comparison.json` read back against the rows' own
hits, the reuse of a finished search and the refusal of a foreign one, the reuse of measured rows,
and the CLI's errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from deos_dsl.cli import main
from deos_dsl.compiler.models import resolve_model
from deos_dsl.embedded.evaluate import evaluate
from deos_dsl.embedded.vqa import FAMILIES, fixed_eval_batch
from deos_dsl.errors import StudyError
from deos_dsl.frontend import ir, load_spaces
from deos_dsl.search.loop import Options
from deos_dsl.study import StudyPlan, run_study, study_spaces
from deos_dsl.search.result import read_run
from deos_dsl.study.run import budget_space, row_file, search_dir, warm_start

ROOT = Path(__file__).resolve().parents[2]
STUDY_SPACE = ROOT / "benchmarks" / "study.deos"
ROWS = ROOT / "benchmarks" / "study_llava.deos"  # corners, random keep, ablations
FASTV, TOME = ROOT / "spaces" / "fastv.deos", ROOT / "spaces" / "tome.deos"
EXAMPLES = 50
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _plan(out: Path, steps: int = 2, data: str = "embedded") -> StudyPlan:
    rows = [s for s in load_spaces(ROWS) if s.name in ("corner_prune_projector", "random_projector", "eos_llava_gates_open")]
    spaces = load_spaces(STUDY_SPACE) + load_spaces(FASTV) + load_spaces(TOME) + rows
    chosen = study_spaces(spaces, "eos_study", ("corner_prune_projector",), ("random_projector",), ("eos_llava_gates_open",))
    options = Options(steps=steps, batch_size=4, val_size=20, device="cpu")
    return StudyPlan(chosen.search, chosen.fixed, (0.5,), "embedded", data, out, options, EXAMPLES, seeds=2,
                     ablations=chosen.ablations, ablation_budgets=(0.5,))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list[Path]]:
    out = tmp_path_factory.mktemp("study")
    entries, _, paths = run_study(_plan(out), Console(file=open("/dev/null", "w")), "test")
    return out, entries, paths


def test_study_spaces_classifies_the_search_space_the_fixed_rows_and_the_ablations() -> None:
    spaces = load_spaces(STUDY_SPACE) + load_spaces(ROOT / "spaces" / "sparsevlm.deos") + load_spaces(ROOT / "spaces" / "eos.deos")
    chosen = study_spaces(spaces, "eos_study")
    assert chosen.search.name == "eos_study" and chosen.ablations == ()
    assert [b.name for b in chosen.fixed["baseline"]] == ["sparsevlm_prune", "sparsevlm"]  # not `baseline` (no site), not eos_* (learned)
    rows = study_spaces(spaces + load_spaces(ROWS), "eos_study", ("corner_merge_layer0",), ("random_projector",), ("eos_llava",))
    assert [s.name for s in rows.fixed["corner"]] == ["corner_merge_layer0"] and [s.name for s in rows.fixed["random"]] == ["random_projector"]
    assert "corner_merge_layer0" not in [s.name for s in rows.fixed["baseline"]] and [s.name for s in rows.ablations] == ["eos_llava"]
    with pytest.raises(StudyError, match="no space `eos_stdy`"):
        study_spaces(spaces, "eos_stdy")
    with pytest.raises(StudyError, match="learns nothing"):
        study_spaces(spaces, "sparsevlm_prune")
    with pytest.raises(StudyError, match="`eos_192` learns: it is not a fixed space"):
        study_spaces(spaces, "eos_study", corners=("eos_192",))
    with pytest.raises(StudyError, match="`sparsevlm` learns nothing"):
        study_spaces(spaces, "eos_study", ablations=("sparsevlm",))


def test_budget_space_sets_the_token_budget_and_keeps_a_flops_budget() -> None:
    """The study's budget replaces a space's `tokens.mean` limits; a FLOPs limit stays (the vision
    ablation searches under both), and a space without constraints gets the budget alone."""
    spaces = {s.name: s for s in load_spaces(ROOT / "spaces" / "eos.deos") + load_spaces(ROWS)}
    budgeted = budget_space(spaces["eos_64"], 0.11)  # tokens.mean <= 64 tokens and flops <= 0.25 * dense
    assert [(c.quantity, c.op) for c in budgeted.constraints] == [("tokens.mean", "<="), ("flops", "<=")]
    assert budgeted.constraints[0].bound == ir.Num(value=11.0, unit="%")
    assert budgeted.constraints[1] == next(c for c in spaces["eos_64"].constraints if c.quantity == "flops")
    assert [c.quantity for c in budget_space(spaces["eos_llava_vision"], 0.25).constraints] == ["tokens.mean", "flops"]
    assert [c.quantity for c in budget_space(spaces["eos_llava"], 0.25).constraints] == ["tokens.mean"]


def test_every_schedule_meets_the_budget_and_is_measured(study) -> None:
    out, entries, _ = study
    assert [(e.kind, e.method, e.seed) for e in entries] == [
        ("dense", "dense", None), ("search", "eos_study", 0), ("search", "eos_study", 1), ("baseline", "fastv", None),
        ("baseline", "tome", None), ("corner", "corner_prune_projector", None), ("random", "random_projector", None),
        ("ablation", "eos_llava_gates_open", 0)]
    dense = entries[0]
    for entry in entries[1:]:
        assert entry.error is None, entry.error
        assert entry.tokens_mean <= 0.5
        assert set(entry.accuracy) == {"overall", *FAMILIES}
        assert 0 < entry.gflops < dense.gflops  # fewer tokens, fewer counted FLOPs
        assert any(site["active"] for site in entry.sites)
    for entry in entries:
        assert len(entry.hits) == EXAMPLES and 100 * entry.hits.count("1") / EXAMPLES == pytest.approx(entry.accuracy["overall"])
    for entry in (e for e in entries if e.kind in ("search", "ablation")):
        assert {"size", "moves", "expected_met", "val_rounded", "val_schedule"} <= set(entry.repair)
    assert "seed 1" in entries[2].setting and entries[1].sites != [] and entries[2].sites != []
    for seed, name in ((0, None), (1, None), (0, "eos_llava_gates_open")):
        assert search_dir(out, 0.5, seed, name).joinpath("schedule.json").is_file()
    opened = json.loads(search_dir(out, 0.5, 0, "eos_llava_gates_open").joinpath("schedule.json").read_text())
    assert all(site["active"] for site in opened["sites"])  # the ablation's gates are fixed open


def test_dense_row_matches_an_independent_evaluation(study) -> None:
    _, entries, _ = study
    expected = evaluate(resolve_model("embedded").model, fixed_eval_batch(size=EXAMPLES))
    assert entries[0].accuracy == pytest.approx(expected)


def test_files_are_written_and_consistent(study) -> None:
    out, entries, paths = study
    assert [p.name for p in paths] == ["results.json", "comparison.json", "table.md", "pareto.png", "patterns.png"]
    results = json.loads((out / "results.json").read_text())
    assert [e["method"] for e in results["entries"]] == [e.method for e in entries]
    table = (out / "table.md").read_text()
    for entry in entries[1:]:
        assert f"{entry.accuracy['overall']:.1f}" in table and entry.method in table
    searched = (entries[1].accuracy["overall"] + entries[2].accuracy["overall"]) / 2
    dense = entries[0].accuracy["overall"]
    assert f"| **eos_study** | search | {searched:.1f} |" in table and f"| dense (100%) | dense | {dense:.1f} |" in table


def test_comparison_json_reads_back_against_the_rows_hits(study) -> None:
    out, entries, _ = study
    (budget,) = json.loads((out / "comparison.json").read_text())
    assert budget["budget"] == 0.5 and budget["dense"] == pytest.approx(entries[0].accuracy["overall"] / 100)
    rows = {row["name"]: row for row in budget["rows"]}
    assert [(row["name"], row["kind"]) for row in budget["rows"]] == [
        ("eos_study", "search"), ("fastv", "baseline"), ("tome", "baseline"), ("corner_prune_projector", "corner"),
        ("random_projector", "random"), ("eos_llava_gates_open", "ablation")]
    seeds = [entries[1].accuracy["overall"] / 100, entries[2].accuracy["overall"] / 100]
    assert rows["eos_study"]["seeds"] == pytest.approx(seeds) and rows["eos_study"]["accuracy"] == pytest.approx(sum(seeds) / 2)
    others = [e for e in entries if e.kind in ("baseline", "corner", "random")]
    best = max(others, key=lambda e: e.accuracy["overall"])
    versus = budget["search_vs_best"]
    assert versus["best_other"] == best.method and versus["examples"] == EXAMPLES
    per_example = [(int(a) + int(b)) / 2 - int(c) for a, b, c in zip(entries[1].hits, entries[2].hits, best.hits)]
    assert versus["diff"] == pytest.approx(sum(per_example) / EXAMPLES)
    low, high = versus["ci95"]
    assert low <= versus["diff"] <= high
    assert versus["verdict"] == ("beats" if low > 0 else "loses" if high < 0 else "ties")
    assert versus["verdict"] in (out / "table.md").read_text()
    headroom = budget["headroom"]  # the dense model against the same best row
    assert headroom["best_other"] == best.method
    assert headroom["diff"] == pytest.approx(sum(int(a) - int(c) for a, c in zip(entries[0].hits, best.hits)) / EXAMPLES)
    # the ablation row: the search minus it, and it against the best row costing no more GFLOPs
    (ablation,) = [e for e in entries if e.kind == "ablation"]
    row = rows["eos_llava_gates_open"]
    minus = [(int(a) + int(b)) / 2 - int(c) for a, b, c in zip(entries[1].hits, entries[2].hits, ablation.hits)]
    assert row["vs_search"]["diff"] == pytest.approx(sum(minus) / EXAMPLES)
    cheaper = [e for e in others if e.gflops <= ablation.gflops]
    if cheaper:
        cheapest = max(cheaper, key=lambda e: e.accuracy["overall"])
        assert row["vs_cheapest"]["other"] == cheapest.method and row["vs_cheapest"]["other_gflops"] <= ablation.gflops
        assert row["vs_cheapest"]["diff"] == pytest.approx((ablation.accuracy["overall"] - cheapest.accuracy["overall"]) / 100)
    else:
        assert row["vs_cheapest"] is None
    assert "| 50% | eos_llava_gates_open |" in (out / "table.md").read_text()
    for name in ("pareto.png", "patterns.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_a_finished_search_is_reused_and_a_foreign_one_refused(study, tmp_path: Path) -> None:
    out, entries, _ = study
    log = tmp_path / "log.txt"
    with log.open("w") as stream:
        again, _, _ = run_study(_plan(out), Console(file=stream, width=200), "test")
    assert "reusing the finished search" in log.read_text()
    assert again[1].accuracy == entries[1].accuracy
    with pytest.raises(StudyError, match="other arguments"):
        run_study(_plan(out, data="embedded:shapes_vqa[:64]"), Console(file=open("/dev/null", "w")), "test")
    with pytest.raises(StudyError, match="other arguments"):  # a search of 2 steps is no search of 3
        run_study(_plan(out, steps=3), Console(file=open("/dev/null", "w")), "test")


def test_a_rerun_reuses_every_measured_row_and_measures_a_changed_one_again(study, tmp_path: Path) -> None:
    out, entries, _ = study
    copy = tmp_path / "study"
    shutil.copytree(out, copy)
    first, _, _ = run_study(_plan(copy), Console(file=open("/dev/null", "w")), "test")
    assert [e.hits for e in first] == [e.hits for e in entries]
    log = tmp_path / "log.txt"
    with log.open("w") as stream:
        again, _, _ = run_study(_plan(copy), Console(file=stream, width=300), "test")
    assert again == first  # every row read back whole, its hits and timings too
    assert log.read_text().count("reusing the row") == len(entries)
    assert (copy / "dense.json").is_file() and (search_dir(copy, 0.5, 1) / "row.json").is_file()

    fastv = row_file(copy, 0.5, "fastv")
    kept = json.loads(fastv.read_text())
    kept["key"]["examples"] = EXAMPLES - 1  # measured on other examples: not the same row
    kept["entry"]["hits"] = "0" * EXAMPLES
    fastv.write_text(json.dumps(kept))
    with log.open("w") as stream:
        again, _, _ = run_study(_plan(copy), Console(file=stream, width=300), "test")
    assert log.read_text().count("reusing the row") == len(entries) - 1
    assert [e.hits for e in again] == [e.hits for e in entries]
    assert json.loads(fastv.read_text())["key"]["examples"] == EXAMPLES

    fastv.write_text("{half a row")
    with pytest.raises(StudyError, match="fastv.json: unreadable kept measurement"):
        run_study(_plan(copy), Console(file=open("/dev/null", "w")), "test")


def test_a_warm_study_keeps_the_best_on_validation_of_the_cold_search_the_warm_search_and_the_row(
        study, tmp_path: Path) -> None:
    """`warm`: each seed also searches from the fixed row's schedule at the budget (`run.json`'s
    start: each active site's kept share) into `search-warm`; the seed's row is the candidate
    (cold search, warm search, the row itself) best on the validation examples, each candidate's
    validation accuracy kept beside it and reused (every branch forced once)."""
    out, entries, _ = study
    copy = tmp_path / "study"
    shutil.copytree(out, copy)
    plan = dataclasses.replace(_plan(copy), seeds=1, ablations=(), warm="corner_prune_projector")
    warm_entries, _, _ = run_study(plan, Console(file=open("/dev/null", "w")), "test")
    row, corner = warm_entries[1], next(e for e in warm_entries if e.method == "corner_prune_projector")
    (projector,) = [site for site in corner.sites if site["active"]]
    assert read_run(search_dir(copy, 0.5, warm=True)).start == warm_start(corner) == {"P": projector["keep"] / projector["entering"]}
    assert (row.kind, row.method, row.seed, row.start["from"], row.start["val_size"]) == ("search", "eos_study", 0, corner.method, 20)
    validation, test = row.start["val"], row.start["test"]
    assert list(validation) == list(test) == ["start", "warm", "cold"]
    assert test["cold"] == entries[1].accuracy["overall"] and test["start"] == corner.accuracy["overall"]
    assert row.start["kept"] == max(validation, key=lambda name: (validation[name], -list(validation).index(name)))
    assert row.accuracy["overall"] == test[row.start["kept"]]
    cold_validation = json.loads((search_dir(copy, 0.5) / "val.json").read_text())
    assert cold_validation["accuracy"] == validation["cold"] and cold_validation["key"]["val_size"] == 20
    assert json.loads((copy / "budget-50" / "rows" / "corner_prune_projector.val.json").read_text())["accuracy"] == validation["start"]
    table = (copy / "table.md").read_text()
    assert "Warm start (`--warm corner_prune_projector`)" in table
    assert f"| 50% | +0 | {row.start['kept']} | {validation['start']:.1f} / {validation['warm']:.1f} / {validation['cold']:.1f} |" in table

    for best in ("start", "warm", "cold"):
        forced = {name: 90.0 if name == best else 10.0 for name in validation}
        for name, path in (("cold", search_dir(copy, 0.5) / "val.json"), ("warm", search_dir(copy, 0.5, warm=True) / "val.json"),
                           ("start", copy / "budget-50" / "rows" / "corner_prune_projector.val.json")):
            kept = json.loads(path.read_text())
            path.write_text(json.dumps(dict(kept, accuracy=forced[name])))  # the same key: read back, not measured
        again, _, _ = run_study(plan, Console(file=open("/dev/null", "w")), "test")
        assert again[1].start["kept"] == best and again[1].start["val"] == forced
        source = {"start": corner, "cold": entries[1]}.get(best)
        if source is not None:
            assert (again[1].hits, again[1].sites, again[1].gflops) == (source.hits, source.sites, source.gflops)
        assert again[1].accuracy["overall"] == test[best] and f": {best} (" in again[1].setting
    with pytest.raises(StudyError, match="--warm names `fastv_typo`, which is no fixed row"):
        dataclasses.replace(plan, warm="fastv_typo")
    with pytest.raises(StudyError, match="--warm needs validation examples"):
        dataclasses.replace(plan, options=dataclasses.replace(plan.options, val_size=0))


def test_cli_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--model", "embedded", "--data", "embedded", "--out", str(tmp_path / "o")]
    assert main(["study", str(STUDY_SPACE), str(FASTV), "--search", "nope", *common]) == 1
    assert "no space `nope`" in capsys.readouterr().err
    assert main(["study", str(STUDY_SPACE), str(FASTV), "--search", "eos_study", "--budgets", "120", *common]) == 2
    assert "between 0 and 100" in capsys.readouterr().err
    assert main(["study", str(STUDY_SPACE), str(FASTV), "--search", "eos_study", "--examples", "0", *common]) == 2
    assert "argument --examples: expected a whole number >= 1, got 0" in capsys.readouterr().err
    assert main(["study", str(tmp_path / "missing.deos"), "--search", "eos_study", *common]) == 1
    capsys.readouterr()
    assert main(["study", str(STUDY_SPACE), str(FASTV), "--search", "eos_study", "--corners", "eos_study", *common]) == 1
    assert "`eos_study` learns: it is not a fixed space" in capsys.readouterr().err
    assert main(["study", str(STUDY_SPACE), str(FASTV), "--search", "eos_study", "--seeds", "0", *common]) == 2
    capsys.readouterr()
    assert main(["study", str(STUDY_SPACE), str(FASTV), "--search", "eos_study", "--warm", "fastv", *common]) == 1
    assert "--warm needs validation examples" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written on bad input
