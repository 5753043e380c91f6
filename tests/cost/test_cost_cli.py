"""`deos cost`: tables with the conventions, `--json` for machines, `--schedule plan.json`, and
clear errors (exit 1, never a traceback) for bad models, spaces and plans."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from cost_cases import SPACES, counted, loaded
from deos_dsl.cli import EXIT_DIAGNOSTICS, EXIT_OK, main
from deos_dsl.cost.report import human

QWEN = "hf:Qwen2Model"
PYRAMID = str(SPACES / "pyramiddrop.deos")


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), Console(file=out, width=300, color_system=None), Console(file=err, width=300, color_system=None))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def report() -> dict:
    code, out, err = run("cost", PYRAMID, "--model", QWEN, "--json")
    assert code == EXIT_OK, err
    return json.loads(out)


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("emit") / "pyramid"
    code, _, err = run("emit", PYRAMID, "--model", QWEN, "--out", str(out))
    assert code == EXIT_OK, err
    return json.loads((out / "plan.json").read_text())


def test_tables():
    code, out, err = run("cost", PYRAMID, "--model", QWEN)
    assert code == EXIT_OK, err
    for text in ("cost of space `pyramiddrop` on hf:Qwen2Model (B = 2, N_text = 8, N_vis = 16)",
                 "matmul [M,K]@[K,N] = 2*M*K*N", "attention = Q K^T + A V", "causal halving: off",
                 "FLOPs per block (n = the block's tokens)", "tokens per site", "128*B*n**2 + 18432*B*n"):
        assert text in out, text
    row = next(line for line in out.splitlines() if "layers.1@1" in line and "N_vis_1 = 16 -> 4" in line)
    assert "N_vis_0 = 16 -> 8" in row and "yes" in row
    dense = loaded(QWEN)  # what the model in hand really runs, by an independent counter
    flops = counted(lambda: dense.model(*dense.args, **dense.kwargs), math=True)
    assert f"dense {human(flops)} ({flops}), reduced " in out and "ratio " in out


def test_json_is_consistent(report: dict):
    assert report["symbols"] == {"B": 2, "N_text": 8, "N_vis": 16}
    blocks, sites = report["blocks"], report["sites"]
    assert sum(b["dense"] for b in blocks) == report["dense"]
    assert sum(b["reduced"] for b in blocks) + sum(s["overhead"]["reduced"] for s in sites) == report["reduced"]
    assert report["ratio"] == pytest.approx(report["reduced"] / report["dense"])
    assert [s["leaving"]["reduced"] for s in sites] == [8, 4, 2]
    assert [s["tokens_out"]["reduced"] for s in sites] == [16, 12, 10]
    assert sum(b["share"] for b in blocks) == pytest.approx(1.0)


def test_schedule_from_deos_emit(plan: dict, report: dict, tmp_path: Path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    code, out, err = run("cost", PYRAMID, "--model", QWEN, "--json", "--schedule", str(path))
    assert code == EXIT_OK, err
    assert json.loads(out)["reduced"] == report["reduced"]  # emit plans what the space says
    plan["sites"][-1]["active"] = False  # the last site: the spans the others plan stay right
    path.write_text(json.dumps(plan))
    code, out, err = run("cost", PYRAMID, "--model", QWEN, "--json", "--schedule", str(path))
    assert code == EXIT_OK, err
    changed = json.loads(out)
    assert changed["sites"][-1]["leaving"]["reduced"] == 4 and not changed["sites"][-1]["active"]
    # the last site sits BEFORE the last decoder layer: off, it stops paying its overhead, and that
    # layer runs on every token entering it again, which costs more than the overhead saved
    assert report["reduced"] - report["sites"][-1]["overhead"]["reduced"] < changed["reduced"] < report["dense"]
    assert changed["reduced"] > report["reduced"]


def test_flags_change_what_is_counted(report: dict):
    code, out, _ = run("cost", PYRAMID, "--model", QWEN, "--json", "--all-ops")
    assert code == EXIT_OK and json.loads(out)["dense"] > report["dense"]
    assert "all (pointwise 1" in json.loads(out)["conventions"][3]


@pytest.mark.parametrize("case", ["unknown model", "bad space name", "corrupt", "missing file", "other space",
                                  "missing site", "bad count", "stale span"])
def test_errors(case: str, plan: dict, tmp_path: Path):
    path = tmp_path / "plan.json"
    args = ["cost", PYRAMID, "--model", QWEN, "--schedule", str(path)]
    expected: list[str]
    if case == "unknown model":
        args, expected = ["cost", PYRAMID, "--model", "hf:Qwen2Modl"], ["unknown model `hf:Qwen2Modl`", "did you mean"]
    elif case == "bad space name":
        args, expected = ["cost", PYRAMID, "--model", QWEN, "--space", "nope"], ["no space `nope`"]
    elif case == "corrupt":
        path.write_text("{not json")
        expected = [f"cannot read schedule {path}", "hint: pass a plan.json"]
    elif case == "missing file":
        expected = [f"cannot read schedule {path}"]
    elif case == "other space":
        path.write_text(json.dumps(dict(plan, space="fastv")))
        expected = [f"{path} is a plan of space `fastv`, not of `pyramiddrop`", "--space fastv"]
    elif case == "missing site":
        path.write_text(json.dumps(dict(plan, sites=plan["sites"][1:])))
        expected = [f"{path} does not match the space's sites", "missing layers.0@0", "the sites are layers.0@0"]
    elif case == "bad count":
        broken = [dict(plan["sites"][0], leaving=99)] + plan["sites"][1:]
        path.write_text(json.dumps(dict(plan, sites=broken)))
        expected = ["site `layers.0@0` lets 99 tokens leave out of 16"]
    else:  # the first site switched off but the next still plans the 8 tokens it left
        path.write_text(json.dumps(dict(plan, sites=[dict(plan["sites"][0], active=False)] + plan["sites"][1:])))
        expected = ["site `layers.1@1` plans 8 reducible tokens entering it, the model gives it 16"]
    code, out, err = run(*args)
    assert code == EXIT_DIAGNOSTICS, (out, err)
    assert "Traceback" not in err and "internal error" not in err
    for text in expected:
        assert text in err, (text, err)
