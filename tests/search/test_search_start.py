"""Warm start (`Options.start`, `deos search --start`): the named sites' learned keep ratios
start at the given share of their entering tokens, every other learned keep at 99% (each
clamped into its range), the start is part of `run.json` (a resume with another start is
refused), and bad names or ratios are clear errors before any compute."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deos_dsl.cli import main
from deos_dsl.errors import SearchError
from deos_dsl.search.graph import START_KEEP_ALL
from deos_dsl.search.loop import Options, Search, search
from deos_dsl.search.result import read_run
from search_cases import load_space, write_space

OPTIONS = Options(batch_size=4, val_size=0, device="cpu")


def _keeps(built: Search) -> dict[str, float]:
    return {name: float(module.value("beta").detach()) for name, module in built.graph.modules.items()}


def test_named_sites_start_at_their_ratio_and_the_others_keep_almost_everything(tmp_path: Path) -> None:
    cold = _keeps(Search(load_space(tmp_path), "embedded", "embedded", tmp_path / "cold", OPTIONS))
    assert all(keep == pytest.approx(0.5) for keep in cold.values())  # the space's init
    start = {"P": 0.465, "decoder.layers.2@1": 0.25, "D3": 0.01}  # short or bound names; 0.01 is below the range
    warm = _keeps(Search(load_space(tmp_path), "embedded", "embedded", tmp_path / "warm", Options(**{**OPTIONS.__dict__, "start": start})))
    assert warm == {"projector@0": pytest.approx(0.465, abs=1e-6), "decoder.layers.0@1": pytest.approx(START_KEEP_ALL, abs=1e-6),
                    "decoder.layers.1@1": pytest.approx(START_KEEP_ALL, abs=1e-6),
                    "decoder.layers.2@1": pytest.approx(0.25, abs=1e-6), "decoder.layers.3@1": pytest.approx(0.05, abs=1e-3)}  # the range edge, as an init there


def test_the_start_is_recorded_and_a_resume_with_another_start_is_refused(tmp_path: Path) -> None:
    space, out = load_space(tmp_path, steps=2), tmp_path / "out"
    options = Options(**{**OPTIONS.__dict__, "start": {"P": 0.3}, "checkpoint_every": 1})
    search(space, "embedded", "embedded", out, Options(**{**options.__dict__, "stop_after": 1}))
    assert read_run(out).start == {"P": 0.3}
    with pytest.raises(SearchError, match="other arguments .*: start differ"):
        Search(space, "embedded", "embedded", out, Options(**{**options.__dict__, "start": {"P": 0.4}}), resume=True)
    resumed = search(space, "embedded", "embedded", out, options, resume=True)
    assert resumed.steps_done == 2 and resumed.schedule is not None


def test_a_bad_start_is_a_clear_error_before_any_compute(tmp_path: Path) -> None:
    space = load_space(tmp_path)
    for start, message in (({"D9": 0.5}, r"(?s)names `D9`, which is no site .* name one of D0, D1, D2, D3, P"),
                           ({"P": 1.5}, r"keeps 1.5 of the tokens entering `P`")):
        with pytest.raises(SearchError, match=message):
            Search(space, "embedded", "embedded", tmp_path / "out", Options(**{**OPTIONS.__dict__, "start": start}))
        assert not (tmp_path / "out").exists()


def test_the_cli_parses_the_start_and_refuses_a_malformed_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_space(tmp_path, steps=1)
    assert main(["search", str(path), "--out", str(tmp_path / "bad"), "--start", "D2=lots"]) == 2
    assert "expected SITE=RATIO" in capsys.readouterr().err
    code = main(["search", str(path), "--out", str(tmp_path / "out"), "--start", "D2=25%", "P=0.5", "--batch", "4",
                 "--val", "0", "--device", "cpu"])
    assert code == 0 and read_run(tmp_path / "out").start == {"D2": 0.25, "P": 0.5}
    assert torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=False)["step"] == 1
