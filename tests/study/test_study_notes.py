"""The study's table notes (`deos_dsl/study/notes.py`) are the differences docs/baselines.md
lists: the documentation holds exactly the rendered notes block, every note belongs to a shipped
baseline space, and `table.md` prints the notes of the baselines it lists (and only those)."""

from __future__ import annotations

import re
from pathlib import Path

from deos_dsl.frontend import load_spaces
from deos_dsl.study.notes import BASELINE_NOTES, notes_markdown
from deos_dsl.study.report import table_markdown

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- study notes: begin -->\n(.*?)\n<!-- study notes: end -->", re.S)


def test_the_documentation_holds_exactly_the_notes():
    (block,) = BLOCK.findall((ROOT / "docs" / "baselines.md").read_text(encoding="utf-8"))
    assert block == "\n".join(notes_markdown(list(BASELINE_NOTES)))


def test_every_note_is_a_shipped_baseline_space():
    shipped = {space.name for path in (ROOT / "spaces").glob("*.deos") for space in load_spaces(path) if space.sites}
    assert set(BASELINE_NOTES) <= shipped


def test_the_study_table_prints_the_notes_of_its_baselines():
    meta = {"search_space": "s", "baselines": ["fastv", "tome", "sparsevlm"], "model": "m", "examples": 1, "command": "c"}
    table = table_markdown([], meta, [])
    assert f"- `tome`: {BASELINE_NOTES['tome']}." in table and f"- `sparsevlm`: {BASELINE_NOTES['sparsevlm']}." in table
    assert "`fastv`:" not in table and "`evit`:" not in table  # FastV is faithful; EViT is not in this study
