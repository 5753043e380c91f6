"""The `deos` command line, called in-process with captured consoles and once as a process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from deos_dsl import cli

ROOT = Path(__file__).resolve().parents[2]
GOOD = "space s {\n  site projector {\n    retain: 50%\n    score: norm\n    operator: prune\n  }\n}\n"
BAD = "space s {\n  site decodr.layers[2] {\n    retain: 50%\n    score: norm\n    operator: prune\n  }\n}\n"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), Console(file=out, width=300, color_system=None), Console(file=err, width=300, color_system=None))
    return code, out.getvalue(), err.getvalue()


def test_check_ok_and_diagnostics(tmp_path: Path):
    good, bad = tmp_path / "good.deos", tmp_path / "bad.deos"
    good.write_text(GOOD)
    bad.write_text(BAD)
    assert run("check", str(good))[0] == 0
    code, _, err = run("check", str(good), str(bad))
    assert code == 1
    lines = err.splitlines()
    assert lines[0] == f"{bad}:2:8: error: unknown role `decodr`"
    assert lines[1].endswith("  site decodr.layers[2] {") and lines[2].strip() == "^" + "~" * 15
    assert "did you mean `decoder.layers`?" in lines[3]


def test_check_missing_file_and_directory(tmp_path: Path):
    code, _, err = run("check", str(tmp_path / "nope.deos"), str(tmp_path))
    assert code == 1
    assert f"{tmp_path / 'nope.deos'}:1:1: error: no such file" in err
    assert f"{tmp_path}:1:1: error: is a directory" in err
    assert "Traceback" not in err


def test_fmt_check_lists_changes_without_writing(tmp_path: Path):
    messy, clean = tmp_path / "messy.deos", tmp_path / "clean.deos"
    messy.write_text("space s { site projector { retain: 50% score: norm operator: prune } }")
    clean.write_text(GOOD)
    code, out, _ = run("fmt", "--check", str(messy), str(clean))
    assert code == 1 and f"would reformat {messy}" in out and str(clean) not in out
    assert messy.read_text().startswith("space s { site")
    assert run("fmt", "--check", str(clean))[0] == 0


def test_fmt_rewrites_atomically(tmp_path: Path):
    messy = tmp_path / "messy.deos"
    messy.write_text("space s { site projector { retain: 50% score: norm operator: prune } }")
    code, out, _ = run("fmt", str(messy))
    assert code == 0 and "reformatted" in out
    assert messy.read_text() == GOOD
    assert [p.name for p in tmp_path.iterdir()] == ["messy.deos"], "no temporary file is left behind"
    assert run("fmt", str(messy))[1] == ""


def test_fmt_reports_syntax_errors(tmp_path: Path):
    broken = tmp_path / "broken.deos"
    broken.write_text("space s {\n")
    code, _, err = run("fmt", str(broken))
    assert code == 1 and f"{broken}:1:10: error: unexpected end of file" in err
    assert broken.read_text() == "space s {\n"


def test_show_tree_and_json():
    code, out, _ = run("show", str(ROOT / "spaces" / "fastv.deos"))
    assert code == 0 and "space fastv" in out and "site decoder.layers[1]" in out and "operator: prune" in out
    code, out, _ = run("show", str(ROOT / "spaces" / "evit.deos"), "--json")
    (space,) = json.loads(out)
    assert code == 0 and space["name"] == "evit" and space["sites"][0]["operator"]["tau"]["value"]["value"] == "Infinity"


def test_show_reports_diagnostics_instead_of_a_tree(tmp_path: Path):
    bad = tmp_path / "bad.deos"
    bad.write_text(BAD)
    code, out, err = run("show", str(bad))
    assert code == 1 and out == "" and "unknown role `decodr`" in err


def test_schema_prints_json_schema():
    code, out, _ = run("schema")
    schema = json.loads(out)
    assert code == 0 and schema["title"] == "Module" and "Space" in schema["$defs"]


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["check"], ["show", "a", "b"], ["fmt", "--bogus", "x"]])
def test_usage_errors_exit_2(argv: list[str]):
    assert run(*argv)[0] == 2


def test_internal_error_is_one_line_without_traceback(monkeypatch, tmp_path: Path):
    def boom(*_: object) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr(cli, "check", boom)
    monkeypatch.delenv("DEOS_DEBUG", raising=False)
    code, _, err = run("check", str(tmp_path / "x.deos"))
    assert code == cli.EXIT_INTERNAL == 70
    assert err.strip().startswith("deos: internal error (RuntimeError: kaput)") and "please report" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_console_script_runs_as_a_process():
    deos = Path(sys.executable).with_name("deos")
    result = subprocess.run([str(deos), "check", *sorted(str(p) for p in (ROOT / "spaces").glob("*.deos"))],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "spaces/eos.deos: ok (5 spaces)" in result.stdout


def test_internal_error_traceback_only_with_debug(monkeypatch, capsys, tmp_path: Path):
    def boom(*_: object) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr(cli, "check", boom)
    monkeypatch.setenv("DEOS_DEBUG", "1")
    assert run("check", str(tmp_path / "x.deos"))[0] == 70
    assert "Traceback" in capsys.readouterr().err
