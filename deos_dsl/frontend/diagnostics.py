"""Diagnostics helpers: did-you-mean hints, source lines for the caret, positioned reports.

Invariant: every user-facing failure of parsing, resolution or validation is a `SpaceError`
(`deos_dsl.errors`) carrying one or more `Diagnostic`s; no other exception type escapes for
bad input.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from typing import Any, Iterable

from deos_dsl.errors import Diagnostic


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
