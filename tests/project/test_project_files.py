"""`write_atomically`: the old file or the new one, never a half-written one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deos_dsl.files import write_atomically


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    target = tmp_path / "weights.pt"
    target.write_text("old")

    def half_then_crash(temp: Path) -> None:
        temp.write_text("ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, half_then_crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


def test_a_write_replaces_the_file_and_keeps_its_permissions(tmp_path: Path):
    target = tmp_path / "space.deos"
    target.write_text("old")
    target.chmod(0o640)
    write_atomically(target, lambda temp: temp.write_text("new"))
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    write_atomically(tmp_path / "fresh.json", lambda temp: temp.write_text("{}"))
    assert (tmp_path / "fresh.json").read_text() == "{}"
