"""Pattern consistency across task distributions (`study/consistency.py`, `deos patterns`): the
four measures on hand-made patterns, the seeds' yardstick and the verdict, the refusals, and the
command end to end on real searches of the shipped model on two question-family groups."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from deos_dsl import cli
from deos_dsl.errors import StudyError
from deos_dsl.search.result import read_schedule
from deos_dsl.study.consistency import RunPattern, SiteDecision, consistency, distance, read_pattern

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SETTING = ("embedded", ("tokens.mean <= 25%",))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(data: str, seed: int, leaving: tuple[int, ...], active: tuple[bool, ...], gamma: tuple[float, ...]) -> RunPattern:
    sites = tuple(SiteDecision(name, on, tokens, "mix" if on else "off", g)
                  for name, tokens, on, g in zip(("P", "D0", "D1"), leaving, active, gamma))
    return RunPattern(Path(f"/{data}/{seed}"), data, seed, SETTING, sites)


def test_the_measures_of_one_pair_by_hand() -> None:
    a = run("x", 0, (72, 72, 18), (True, False, True), (0.8, 0.0, 0.5))
    b = run("y", 0, (36, 36, 18), (True, True, False), (0.6, 0.3, 0.0))
    measured = distance(a, b)
    assert measured["same_active"] == pytest.approx(1 / 3)  # only P is open in both
    assert measured["token_gap"] == pytest.approx((1 + 1 + 0) / 3)  # log2(72/36) twice
    assert measured["same_regime"] == 1.0 and measured["gamma_gap"] == pytest.approx(0.2)
    assert distance(a, a) == {"same_active": 1.0, "token_gap": 0.0, "same_regime": 1.0, "gamma_gap": 0.0}
    closed = run("y", 1, (144, 144, 144), (False, False, False), (0.0, 0.0, 0.0))
    assert math.isnan(distance(a, closed)["same_regime"])  # no site open in both: nothing to compare


def test_pairs_across_groups_are_judged_against_the_seeds_yardstick() -> None:
    seed0 = run("all", 0, (72, 36, 18), (True, True, True), (0.8, 0.6, 0.5))
    seed1 = run("all", 1, (72, 36, 9), (True, True, True), (0.9, 0.6, 0.5))  # token gap 1/3
    near = run("count", 0, (72, 36, 12), (True, True, True), (0.2, 0.1, 0.9))  # gamma differs: reported, not judged
    far = run("colour", 0, (144, 18, 18), (False, True, True), (0.0, 0.6, 0.5))
    result = consistency([seed0, seed1, near])
    inside = [p for p in result["pairs"] if p["inside"]]
    assert len(inside) == 1 and "verdict" not in inside[0]
    assert result["yardstick"] == {"same_active": 1.0, "same_regime": 1.0, "token_gap": pytest.approx(1 / 3)}
    assert [p["verdict"] for p in result["pairs"] if not p["inside"]] == ["agrees", "agrees"]
    assert result["consistent"] and result["groups"] == ["all", "count"] and result["pairs_agreeing"] == 2
    result = consistency([seed0, seed1, near, far])
    assert not result["consistent"] and (result["pairs_agreeing"], result["pairs_across"]) == (2, 5)
    assert {p["b"]: p["verdict"] for p in result["pairs"] if p["b"] == far.label} == {far.label: "differs"}
    assert result["across_mean"]["same_active"] == pytest.approx((1 + 1 + 2 / 3 + 2 / 3 + 2 / 3) / 5)
    slightly = run("count", 0, (72, 36, 6), (True, True, True), (0.8, 0.6, 0.5))  # 0.53 apart from seed0, 0.2 from seed1
    result = consistency([seed0, seed1, near, slightly])
    assert result["consistent"] and (result["pairs_agreeing"], result["pairs_across"]) == (3, 4)  # on average within
    json.dumps(result, allow_nan=False)  # NaN measures are written as null


def test_without_seeds_only_identical_patterns_agree() -> None:
    a = run("x", 0, (72, 36, 18), (True, True, True), (0.8, 0.6, 0.5))
    assert consistency([a, run("y", 0, (72, 36, 18), (True, True, True), (0.1, 0.6, 0.5))])["consistent"]
    assert not consistency([a, run("y", 0, (72, 36, 17), (True, True, True), (0.8, 0.6, 0.5))])["consistent"]


def test_refusals_name_the_problem() -> None:
    a = run("x", 0, (72, 36, 18), (True, True, True), (0.8, 0.6, 0.5))
    with pytest.raises(StudyError, match="same data") as error:
        consistency([a, run("x", 1, (72, 36, 18), (True, True, True), (0.8, 0.6, 0.5))])
    assert "embedded{count,compare}" in (error.value.hint or "")
    other_budget = RunPattern(Path("/y"), "y", 0, ("embedded", ("tokens.mean <= 11%",)), a.sites)
    with pytest.raises(StudyError, match="another budget"):
        consistency([a, other_budget])


def test_deos_patterns_on_searches_of_two_question_family_groups(tmp_path: Path) -> None:
    seeded = tmp_path / "seeded.deos"
    seeded.write_text(f'import "{BENCHMARKS / "search_25.deos"}"\n\nspace eos_25_seed1 extends eos_25 {{\n'
                      "  policy {\n    seed: 1\n  }\n}\n")
    searches = [("counting", BENCHMARKS / "search_25.deos", "eos_25", "embedded{count,compare}"),
                ("counting-seed1", seeded, "eos_25_seed1", "embedded{count,compare}"),
                ("spatial", BENCHMARKS / "search_25.deos", "eos_25", "embedded{attribute,exist,relation}")]
    err = io.StringIO()
    for out, file, space, data in searches:
        code = cli.main(["search", str(file), "--space", space, "--data", data, "--out", str(tmp_path / out),
                         "--steps", "2", "--batch", "4", "--val", "0"], Console(file=io.StringIO()), Console(file=err))
        assert code == 0, err.getvalue()
    printed = io.StringIO()
    code = cli.main(["patterns", *(str(tmp_path / out) for out, *_ in searches), "--out", str(tmp_path / "p")],
                    Console(file=printed, width=250), Console(file=err))
    assert code == 0, err.getvalue()
    result = json.loads((tmp_path / "p" / "consistency.json").read_text())
    assert result["groups"] == ["embedded{count,compare}", "embedded{attribute,exist,relation}"]
    assert [r["seed"] for r in result["runs"]] == [0, 1, 0]
    for (out, *_), written in zip(searches, result["runs"]):
        schedule, _ = read_schedule(tmp_path / out)
        assert [s["leaving"] for s in written["sites"]] == [s["leaving"] for s in schedule["sites"]]
        assert [s["active"] for s in written["sites"]] == [s["active"] for s in schedule["sites"]]
    assert sum(p["inside"] for p in result["pairs"]) == 1 and len(result["pairs"]) == 3
    assert result["consistent"] == all(p["verdict"] == "agrees" for p in result["pairs"] if not p["inside"])
    assert f"they {'agree' if result['consistent'] else 'differ'}" in printed.getvalue()
    assert (tmp_path / "p" / "consistency.png").read_bytes()[:8] == PNG_MAGIC
    assert read_pattern(tmp_path / "spatial").data == "embedded{attribute,exist,relation}"

    code = cli.main(["patterns", str(tmp_path / "counting"), str(tmp_path / "counting-seed1"), "--out", str(tmp_path / "q")],
                    Console(file=io.StringIO()), Console(file=err, width=250))
    assert code != 0 and "ran on the same data" in err.getvalue() and not (tmp_path / "q").exists()
