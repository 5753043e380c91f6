"""The malformed corpus: every file states its expected diagnostics in `# expect:` lines.

Format: `# expect: [FILE:]LINE:COL: fragment`; FILE defaults to the file itself (a cycle
found while importing is reported in the file that closes it). Every expected diagnostic must
be produced with that exact position and a message or hint containing the fragment.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deos_dsl.frontend.api import check, load_spaces
from deos_dsl.errors import SpaceError

CORPUS = Path(__file__).parent / "malformed"
FILES = sorted(CORPUS.glob("*.deos"))
EXPECT = re.compile(r"^# expect: (?:(?P<file>[\w.]+\.deos):)?(?P<line>\d+):(?P<col>\d+): (?P<text>.+)$")


def expectations(path: Path) -> list[tuple[str, int, int, str]]:
    found = []
    for line in path.read_text().splitlines():
        match = EXPECT.match(line)
        if match:
            found.append((match["file"] or path.name, int(match["line"]), int(match["col"]), match["text"]))
    return found


def test_corpus_is_large_and_mixed():
    assert len(FILES) >= 50
    assert sum(f.name.startswith("syn_") for f in FILES) >= 20
    assert sum(f.name.startswith("sem_") for f in FILES) >= 30


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_malformed_file_reports_expected_positions(path: Path):
    expected = expectations(path)
    assert expected, f"{path.name} has no `# expect:` line"
    spaces, diagnostics = check(path)
    assert diagnostics, "a malformed file must produce diagnostics"
    for file, line, col, text in expected:
        hits = [d for d in diagnostics if Path(d.file).name == file and (d.line, d.col) == (line, col)
                and (text in d.message or text in (d.hint or ""))]
        assert hits, f"missing {file}:{line}:{col}: {text!r}; got {[str(d) for d in diagnostics]}"
        assert all(d.source_line is not None for d in hits), "diagnostics carry their source line"
    with pytest.raises(SpaceError):
        load_spaces(path)


def test_one_file_reports_all_its_semantic_errors():
    path = CORPUS / "sem_many_errors.deos"
    _, diagnostics = check(path)
    assert len(expectations(path)) >= 8
    assert len(diagnostics) >= len(expectations(path))
    assert len({d.line for d in diagnostics}) >= 8
