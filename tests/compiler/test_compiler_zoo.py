"""Every tiny HF architecture deos builds (`TINY_MODELS`: vision encoders, language models and
vision-language models) either passes compile + cost + emit with its checks, or is refused with
a named reason by a `DeosError`, never an internal error; and docs/compiler.md lists each in the
matrix `scripts/conformance_matrix.py` generates from these results (`zoo_matrix.py`).

What an architecture does is measured on the model in hand, never asserted per release: which
rows pass is what the generated matrix records, not what this test expects.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deos_dsl.compiler.tiny_models import TINY_MODELS
from zoo_matrix import BEGIN, END, conformance_row, record

DOCS = Path(__file__).resolve().parents[2] / "docs" / "compiler.md"


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_architecture_passes_or_is_refused_by_name(name: str):
    row = conformance_row(name)  # an internal error (not a DeosError) or a failed check raises here
    record(row)
    assert row.refused or row.cells, "a traced model with no vision or decoder stack must be refused"
    for cell in [*row.cells.values()]:
        assert cell.ok or cell.text, "a refusal names its reason"


def test_matrix_lists_every_architecture():
    text = DOCS.read_text(encoding="utf-8")
    matrix = text[text.index(BEGIN):text.index(END)]
    assert len(TINY_MODELS) >= 20
    for name in TINY_MODELS:
        assert f"| `{name}` |" in matrix, f"{name} is missing: run python scripts/conformance_matrix.py"
