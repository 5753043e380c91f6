"""Text -> Lark parse tree, with Lark's syntax errors translated into `Diagnostic`s.

Invariant: `parse_tree` either returns a tree or raises `SpaceError`; the Lark object is built
once per process (`grammar()`), LALR, strict, with positions propagated.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
from dataclasses import dataclass
from typing import Iterator

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from deos_dsl.errors import Diagnostic, SpaceError

from .diagnostics import source_lines
from .vocab import CORNERS, SCORES, Score

READABLE = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a quoted string",
    "WINDOW": "a window such as `2x2`",
    "CMP": "`<=` or `>=`",
    "$END": "end of file",
}


class _WholeWords:
    """Post-lexer that makes NAME acceptable in every parser state, so that a keyword only
    matches a whole word (`logg` is the name `logg`, not `log` followed by `g`)."""

    always_accept = ("NAME",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        return stream


def _score_rule(score: Score) -> str:
    if score.option is None:
        return f'"{score.name}"'
    choices = " | ".join(f'"{choice}"' for choice in score.choices)
    return f'"{score.name}" "(" "{score.option}" ":" ({choices}) ")"'


def grammar_text() -> str:
    """`deos.lark` with its vocabulary placeholders filled from `vocab.SCORES` and `vocab.CORNERS`."""
    text = importlib.resources.files("deos_dsl.grammar").joinpath("deos.lark").read_text(encoding="utf-8")
    return (text.replace("<<scores>>", " | ".join(_score_rule(score) for score in SCORES.values()))
                .replace("<<corners>>", " | ".join(f'"{name}"' for name in CORNERS)))


@functools.cache
def grammar() -> Lark:
    """The process-wide parser (building it is the one-off cost measured by the benchmark)."""
    return Lark(grammar_text(), parser="lalr", strict=True, propagate_positions=True, maybe_placeholders=True,
                postlex=_WholeWords())


@functools.cache
def _keywords() -> dict[str, str]:
    """Terminal name -> keyword text for every literal terminal (`SPACE` -> `space`)."""
    return {t.name: t.pattern.value for t in grammar().terminals if isinstance(t.pattern, PatternStr)}


def readable(terminal: str) -> str:
    """How a terminal is named in messages: `space`, `{`, a name, end of file."""
    if terminal in READABLE:
        return READABLE[terminal]
    keyword = _keywords().get(terminal)
    return f"`{keyword}`" if keyword is not None else terminal.lower()


def _expected(terminals: set[str]) -> str:
    names = sorted({readable(t) for t in terminals}, key=lambda s: (not s.startswith("`"), s))
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return f"expected {names[0]}" if len(names) == 1 else f"expected one of {shown}"


def _keyword_hint(word: str, terminals: set[str]) -> str | None:
    keywords = [_keywords()[t] for t in terminals if t in _keywords() and _keywords()[t].isidentifier()]
    close = difflib.get_close_matches(word, keywords, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def _describe(token: Token) -> str:
    if token.type in _keywords() or str(token.value) in _keywords().values():
        return f"`{token.value}`"
    kind = {"NAME": "name", "NUMBER": "number", "STRING": "string", "WINDOW": "window"}.get(token.type, "token")
    return f"{kind} `{token.value}`"


def _end_position(text: str) -> tuple[int, int]:
    stripped = text.rstrip()
    line = stripped.count("\n") + 1
    return line, len(stripped) - (stripped.rfind("\n") + 1) + 1


def _acceptable(error: UnexpectedInput) -> set[str]:
    """The terminals the PARSER accepts here (the lexer's set also holds the always-accepted
    NAME, the parse table also holds nonterminals)."""
    state = getattr(error, "state", None)
    try:
        accepted = set(state.parse_conf.parse_table.states[state.position])
    except (AttributeError, KeyError, IndexError, TypeError):
        accepted = set(getattr(error, "expected", None) or getattr(error, "allowed", None) or ())
    return {t for t in accepted if t == "$END" or t in _terminal_names()}


@functools.cache
def _terminal_names() -> frozenset[str]:
    return frozenset(t.name for t in grammar().terminals)


def _diagnostic(error: UnexpectedInput, text: str, file: str) -> Diagnostic:
    if isinstance(error, UnexpectedToken) and error.token.type != "$END":
        token, expected = error.token, _acceptable(error)
        hint = _keyword_hint(str(token.value), expected) if token.type == "NAME" else None
        return Diagnostic(
            file, token.line, token.column, f"unexpected {_describe(token)}; {_expected(expected)}",
            end_line=token.end_line, end_col=token.end_column, hint=hint,
        )
    if isinstance(error, (UnexpectedToken, UnexpectedEOF)):
        line, col = _end_position(text)
        return Diagnostic(file, line, col, f"unexpected end of file; {_expected(_acceptable(error))}")
    assert isinstance(error, UnexpectedCharacters)
    char = text[error.pos_in_stream]
    if char == '"':
        return Diagnostic(file, error.line, error.column, "unterminated string", hint='close it with `"` on the same line')
    return Diagnostic(
        file, error.line, error.column, f"unexpected character `{char}`; {_expected(_acceptable(error))}",
        end_line=error.line, end_col=error.column + 1,
    )


def parse_tree(text: str, file: str) -> Tree:
    """Parse `text` (named `file` in diagnostics) or raise `SpaceError` with one diagnostic."""
    try:
        return grammar().parse(text)
    except UnexpectedInput as error:
        raise SpaceError([_diagnostic(error, text, file)]) from None


@dataclass(frozen=True)
class Comment:
    """A `#` comment; `own_line` when nothing but blanks precedes it on its line."""

    line: int
    col: int
    text: str
    own_line: bool
    blank_after: bool = False  # the next line is empty (ends a file header)


def scan_comments(text: str) -> list[Comment]:
    """Every comment of a file that parsed (strings hold no newline, so a line scan is exact)."""
    found = []
    lines = source_lines(text)
    for number, line in enumerate(lines, start=1):
        in_string = False
        for col, char in enumerate(line):
            if char == '"':
                in_string = not in_string
            elif char == "#" and not in_string:
                blank_after = number < len(lines) and not lines[number].strip()
                found.append(Comment(number, col + 1, line[col:].rstrip(), not line[:col].strip(), blank_after))
                break
    return found
