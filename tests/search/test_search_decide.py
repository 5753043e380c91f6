"""The deciding phase (`policy { decide: w }`): in the second half of a search every learned gate
is pushed to the side it is on, so the search ends with decided gates and discretisation's
`p > 0.5` rounds a decision; `decide: 0` is the plain search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deos_dsl.search.loop import Options, search
from deos_dsl.frontend import load_spaces
from search_cases import space_text

STEPS = 30


def searched(tmp: Path, decide: float) -> list[dict]:
    path = tmp / f"decide-{decide}.deos"
    path.write_text(space_text(steps=STEPS, policy=f"    lr: 0.3\n    decide: {decide}\n"))
    (space,) = load_spaces(path)
    search(space, "embedded", "embedded", tmp / f"run-{decide}", Options(batch_size=4, val_size=0))
    return [json.loads(line) for line in (tmp / f"run-{decide}" / "search.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[float, list[dict]]:
    tmp = tmp_path_factory.mktemp("decide")
    return {decide: searched(tmp, decide) for decide in (0.0, 4.0)}


def undecided_gates(record: dict) -> list[float]:
    """`|p - 1/2|` of every learned gate of a log record (fixed gates log p = 0 or 1)."""
    return [abs(site["gate"] - 0.5) for site in record["sites"].values() if 0.0 < site["gate"] < 1.0]


def test_the_deciding_term_is_off_in_the_first_half_on_in_the_second_and_0_once_decided(logs):
    log = logs[4.0]
    assert [r["decide"] for r in log[: STEPS // 2]] == [0.0] * (STEPS // 2)
    assert log[STEPS // 2 + 1]["decide"] > 0
    assert log[-1]["decide"] == 0.0  # the hinge is 0 once every gate is decided
    assert all(r["decide"] == 0.0 for r in logs[0.0])


def test_gates_end_decided_with_decide_and_the_first_half_is_the_plain_search(logs):
    plain, deciding = logs[0.0], logs[4.0]
    assert plain[: STEPS // 2] == [{**r, "seconds": p["seconds"]} for r, p in zip(deciding[: STEPS // 2], plain)]
    final = undecided_gates(deciding[-1])
    assert final and min(final) > 0.48  # every learned gate decided: p < 0.02 or p > 0.98
    assert min(final) > min(undecided_gates(plain[-1]))
