"""Diagnostics: the single error currency of the front end.

Invariant: every user-facing failure of parsing, resolution or validation is a `DeosError`
carrying one or more `Diagnostic`s; no other exception type escapes for bad input.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Diagnostic:
    """One positioned message. Lines and columns are 1-based; `end_col` is exclusive."""

    file: str
    line: int
    col: int
    message: str
    end_line: int | None = None
    end_col: int | None = None
    severity: Severity = "error"
    hint: str | None = None
    source_line: str | None = field(default=None, compare=False)

    def location(self) -> str:
        """`file:line:col`, the prefix of every rendered diagnostic."""
        return f"{self.file}:{self.line}:{self.col}"

    def __str__(self) -> str:
        text = f"{self.location()}: {self.severity}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class DeosError(Exception):
    """Raised with ALL the diagnostics found in one unit of work (a file and its imports)."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics: list[Diagnostic] = sorted(
            dict.fromkeys(diagnostics), key=lambda d: (d.file, d.line, d.col, d.message)
        )
        super().__init__("\n".join(str(d) for d in self.diagnostics))


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """A "did you mean `x`?" hint for the closest candidate, or None when nothing is close."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def source_lines(text: str) -> list[str]:
    """The lines of `text` as Lark counts them: only `\\n` ends a line (unlike `str.splitlines`,
    which also breaks at form feeds, `\\x85`, `\\u2028`, ...); a CRLF's `\\r` is dropped."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines[-1] == "":
        lines.pop()
    return lines


def with_sources(diagnostics: Iterable[Diagnostic], sources: dict[str, str]) -> list[Diagnostic]:
    """Fill `source_line` from the texts of the files read so far (for the caret display)."""
    filled = []
    for diag in diagnostics:
        lines = source_lines(sources.get(diag.file, ""))
        line = lines[diag.line - 1] if 0 < diag.line <= len(lines) else None
        filled.append(replace(diag, source_line=line))
    return filled


def report(diagnostics: list[Diagnostic], node: Any, message: str, hint: str | None = None) -> None:
    """Append an error at `node.span` (an IR node); nodes without a span are never reported on."""
    span = getattr(node, "span", None)
    if span is not None:
        diagnostics.append(Diagnostic(span.file, span.line, span.col, message, span.end_line, span.end_col, hint=hint))
