"""The CLI on generated input: flag values and space texts drawn by hypothesis.

Whatever is typed, `deos` exits 0 only when the input is valid, 2 for a usage error, 1 for an
input error, never 70 ("internal error": a bug) and never prints a traceback.
"""

from __future__ import annotations

import io
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from rich.console import Console

from deos_dsl import cli
from deos_dsl.errors import SpaceError
from deos_dsl.frontend.api import loads
from deos_dsl.frontend.parser import grammar

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
NUMBERS = st.one_of(st.integers(-10**20, 10**20).map(str), st.floats(allow_nan=True).map(str),
                    st.text(alphabet="0123456789-+.e xq", max_size=8))
PROGRAMS = from_lark(grammar(), explicit={"WS": st.sampled_from([" ", "\n"]), "COMMENT": st.just("# c\n")})


def run(*argv: str, capsys=None) -> tuple[int, str]:
    err = io.StringIO()
    code = cli.main(list(argv), Console(file=io.StringIO()), Console(file=err, width=200, color_system=None))
    text = err.getvalue() + (capsys.readouterr().err if capsys is not None else "")
    assert code != cli.EXIT_INTERNAL and "internal error" not in text and "Traceback" not in text, (argv, text)
    return code, text


def whole_number(text: str, minimum: int) -> bool:
    try:
        return int(text) >= minimum
    except ValueError:
        return False


@FUZZ
@given(limit=NUMBERS, split=st.sampled_from(["train", "val", "test", "dev", ""]))
def test_data_export_flags(tmp_path_factory, capsys, limit: str, split: str) -> None:
    out = tmp_path_factory.mktemp("export") / "data"
    valid = whole_number(limit, 1) and int(limit) <= 3 and split in ("train", "val", "test")
    if whole_number(limit, 1) and int(limit) > 3:
        return  # valid, but slow to write: the small ones stand for them
    code, _ = run("data", "export", "embedded", "--limit", limit, "--split", split, "--out", str(out), capsys=capsys)
    assert (code == 0) == valid and (code == 2) == (not valid)
    assert out.exists() == valid


@FUZZ
@given(examples=NUMBERS, repeats=NUMBERS)
def test_evaluate_flags(tmp_path: Path, capsys, examples: str, repeats: str) -> None:
    code, text = run("evaluate", str(tmp_path / "none"), "--examples", examples, "--repeats", repeats, capsys=capsys)
    if whole_number(examples, 1) and whole_number(repeats, 1):
        assert code == 1 and "holds no" in text  # the numbers pass; the missing search is the error
    else:
        assert code == 2 and "argument --" in text  # the range, or "expected one argument" for `-1e+16`


@FUZZ
@given(budgets=st.lists(NUMBERS, min_size=1, max_size=3), steps=NUMBERS)
def test_study_flags(tmp_path: Path, capsys, budgets: list[str], steps: str) -> None:
    def percent(text: str) -> bool:
        try:
            return 0 < float(text) < 100
        except ValueError:
            return False

    code, text = run("study", str(tmp_path / "missing.deos"), "--search", "s", "--model", "embedded", "--data", "embedded",
                     "--out", str(tmp_path / "o"), "--budgets", *budgets, "--steps", steps, capsys=capsys)
    valid = all(percent(b) for b in budgets) and whole_number(steps, 1) and not any(b.startswith("-") for b in budgets)
    assert code == (1 if valid else 2), text
    assert not (tmp_path / "o").exists()


@FUZZ
@given(PROGRAMS)
def test_check_fmt_and_show_on_generated_spaces(tmp_path_factory, capsys, text: str) -> None:
    path = tmp_path_factory.mktemp("space") / "fuzz.deos"
    path.write_text(text, encoding="utf-8")
    try:
        loads(text, str(path))
        valid = True
    except SpaceError:
        valid = False
    assert (run("check", str(path), capsys=capsys)[0] == 0) == valid
    assert (run("show", str(path), capsys=capsys)[0] == 0) == valid
    assert run("fmt", "--check", str(path), capsys=capsys)[0] in (0, 1)
