"""Every ```deos block of docs/language.md and of the README's tour is checked.

```deos            -> a complete file that parses and validates
```deos parse-only -> parses (e.g. imports a file that the docs do not ship)
```deos error      -> must be rejected with SpaceError
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deos_dsl.frontend.api import format_text, loads, parse
from deos_dsl.errors import SpaceError

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "language.md"
BLOCK = re.compile(r"^```deos(?P<mode>[ \w-]*)\n(?P<body>.*?)^```$", re.S | re.M)


def deos_blocks(path: Path) -> list[tuple[str, str, int]]:
    """(mode, body, line) of every ```deos block of a Markdown file."""
    text = path.read_text()
    return [(m["mode"].strip() or "valid", m["body"], text[: m.start()].count("\n") + 1) for m in BLOCK.finditer(text)]


BLOCKS = deos_blocks(DOC)
README_BLOCKS = deos_blocks(ROOT / "README.md")


def test_docs_have_an_example_per_construct():
    text = "".join(body for _, body, _ in BLOCKS)
    assert len(BLOCKS) >= 15
    for construct in ("const", "import", "extends", "tokens", "defaults", "activate", "retain", "score", "unified",
                      "merge(", "pool(", "reweight(", "constraint flops", "tokens.after", "objective", "policy", "choices("):
        assert construct in text, construct
    assert {mode for mode, _, _ in BLOCKS} == {"valid", "parse-only", "error"}


@pytest.mark.parametrize(("mode", "body", "line"), BLOCKS + README_BLOCKS,
                         ids=[f"language.md:{line}-{mode}" for mode, _, line in BLOCKS]
                         + [f"README.md:{line}-{mode}" for mode, _, line in README_BLOCKS])
def test_doc_example(mode: str, body: str, line: int):
    if mode == "error":
        parse(body)  # the rejection is semantic, not a typo in the example
        with pytest.raises(SpaceError):
            loads(body, f"docs-line-{line}.deos")
        return
    parse(body)
    if mode == "valid":
        assert loads(body, f"docs-line-{line}.deos")
        assert format_text(body) == body, "doc examples are written in canonical form"
