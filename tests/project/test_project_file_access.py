"""The environment's errors (a full disk, a path through a file, a folder that cannot be made)
are told as such: exit 74, the user's path (not a temporary one), a hint by the errno, no
"internal error", and nothing half-written left behind."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from deos_dsl import cli
from deos_dsl.errors import FileAccessError


def run(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    code = cli.main(list(argv), Console(file=io.StringIO()), Console(file=err, width=300, color_system=None))
    return code, err.getvalue()


def test_an_out_through_a_file_names_the_file(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, err = run("data", "export", "embedded", "--limit", "2", "--out", str(blocker / "data"))
    assert code == cli.EXIT_FILE_ACCESS
    assert f"deos: error: Not a directory: {blocker}" in err and "a part of the path is a file" in err
    assert "internal error" not in err and blocker.read_text() == "x"


def test_a_full_disk_names_the_users_path_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def full(image: Image.Image, path: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "data"
    code, err = run("data", "export", "embedded", "--limit", "2", "--out", str(out))
    assert code == cli.EXIT_FILE_ACCESS
    assert f"deos: error: No space left on device: {out / 'images' / 'test-000000.png'}" in err
    assert "hint: free some disk space" in err and "internal error" not in err
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling


def test_an_error_without_a_path_still_reads_well():
    error = FileAccessError.of(OSError(errno.EROFS, "Read-only file system"))
    assert (error.message, error.hint) == ("Read-only file system", "the file system is read-only: write somewhere else")
    assert FileAccessError.of(OSError("odd")).hint == "check the path, its permissions and the free disk space"
