"""Bounded and confined input: a space file is read only if it is a regular file under the
size limit; an `import` never leaves the root file's folder, the bundled spaces or the import
path (refused before the file is opened); a BOM is accepted; a huge token stays a short message;
`fmt` writes through a symlink; leftovers of a killed writer are cleaned by the next write."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from deos_dsl import cli
from deos_dsl.files import write_directory_atomically
from deos_dsl.frontend.api import check, format_text
from deos_dsl.frontend.loader import BUNDLED_SPACES

SPACE = ("space s {\n  site decoder.layers[1] {\n    activate: on\n    operator: prune\n    score: norm\n"
         "    retain: 50%\n  }\n}\n")


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), Console(file=out, width=300, color_system=None), Console(file=err, width=300, color_system=None))
    return code, out.getvalue(), err.getvalue()


def messages(path: Path) -> list[str]:
    return [d.message for d in check(str(path))[1]]


@pytest.fixture(autouse=True)
def no_import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEOS_IMPORT_PATH", raising=False)


def test_devices_and_fifos_are_refused_without_reading(tmp_path: Path):
    fifo = tmp_path / "pipe.deos"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    assert messages(fifo) == messages(Path("/dev/zero")) == ["is not a regular file (a device, FIFO or socket)"]


def test_a_file_over_the_limit_names_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    big = tmp_path / "big.deos"
    big.write_text(SPACE)
    assert messages(big) == []
    monkeypatch.setenv("DEOS_MAX_SPACE_BYTES", "100")
    ((diagnostic,),) = [check(str(big))[1]]
    assert diagnostic.message == "is larger than 100 bytes, the limit for a .deos file"
    assert "DEOS_MAX_SPACE_BYTES" in diagnostic.hint


def test_a_byte_order_mark_is_accepted(tmp_path: Path):
    marked = tmp_path / "bom.deos"
    marked.write_bytes("\ufeff".encode() + SPACE.encode())
    spaces, diagnostics = check(str(marked))
    assert diagnostics == [] and [s.name for s in spaces] == ["s"]


def test_an_import_leaving_the_allowed_folders_is_refused_before_reading(tmp_path: Path):
    secret = tmp_path / "secret.deos"
    secret.write_text("const leaked = 1  # a line a space must not be able to quote\nnot deos at all\n")
    (tmp_path / "project").mkdir()
    space = tmp_path / "project" / "space.deos"
    space.write_text('import "../secret.deos"\nimport "/etc/passwd"\n' + SPACE)
    code, _, err = run("check", str(space))
    assert code == 1 and err.count("leaves the folders a space may import from") == 2
    assert "leaked" not in err and "root:" not in err and "not deos" not in err
    assert f"imports resolve inside {space.parent}" in err
    code, _, err = run("check", str(space), "--import-path", str(tmp_path))  # allowed explicitly: now it is read
    assert "not deos at all" in err and "import `/etc/passwd` leaves the folders" in err


def test_a_relative_import_is_looked_for_beside_the_file_then_in_the_bundled_spaces_and_the_import_path(
        tmp_path: Path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.deos").write_text(SPACE.replace("space s", "space shared_base"))
    (tmp_path / "project").mkdir()
    space = tmp_path / "project" / "space.deos"
    space.write_text('import "base.deos"\nimport "common.deos"\n\nspace mine extends shared_base {}\n')
    code, _, err = run("check", str(space))  # common.deos is bundled; base.deos is not allowed yet
    assert code == 1 and "imported file `base.deos` not found" in err
    assert "then in the bundled spaces and the --import-path folders" in err and "common.deos" not in err
    code, out, err = run("check", str(space), "--import-path", str(tmp_path / "shared"))
    assert code == 0, err
    assert "ok" in out
    (tmp_path / "project" / "base.deos").write_text("const K = 1\n")  # beside the file wins
    code, _, err = run("check", str(space), "--import-path", str(tmp_path / "shared"))
    assert code == 1 and "shared_base" in err


def test_a_symlink_out_of_the_folder_is_refused_and_bundled_spaces_are_allowed(tmp_path: Path):
    outside = tmp_path / "outside.deos"
    outside.write_text("const K = 1\n")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "link.deos").symlink_to(outside)
    space = tmp_path / "project" / "space.deos"
    space.write_text(f'import "link.deos"\nimport "{BUNDLED_SPACES / "common.deos"}"\n' + SPACE)
    assert messages(space) == ["import `link.deos` leaves the folders a space may import from"]


def test_importing_a_folder_says_it_is_a_folder(tmp_path: Path):
    space = tmp_path / "space.deos"
    space.write_text('import "."\n' + SPACE)
    assert messages(space) == ["imported file `.` is a directory, not a .deos file"]


def test_a_huge_token_is_a_short_message(tmp_path: Path):
    space = tmp_path / "long.deos"
    space.write_text("space s {\n  site decoder.layers[1] {\n    " + "x" * 500_000 + ": 1\n  }\n}\n")
    code, _, err = run("check", str(space))
    assert code == 1 and "unexpected name" in err and len(err) < 1500


def test_fmt_writes_through_a_symlink(tmp_path: Path):
    real = tmp_path / "real.deos"
    real.write_text(SPACE.replace("  site", "  site   "))
    link = tmp_path / "link.deos"
    link.symlink_to(real)
    assert run("fmt", str(link))[0] == 0
    assert link.is_symlink() and real.read_text() == format_text(SPACE)


def test_a_killed_writers_leftovers_are_cleaned_by_the_next_write(tmp_path: Path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".out.{dead.pid}.abcd1234.tmp"  # what a SIGKILLed writer leaves
    leftover.mkdir()
    alive = tmp_path / f".out.{os.getppid()}.abcd1234.tmp"  # another live writer's: kept
    alive.mkdir()
    write_directory_atomically(tmp_path / "out", lambda temp: (temp / "a").write_text("1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "out"])
