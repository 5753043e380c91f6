"""The .deos front end: grammar -> parse tree -> IR -> resolution -> validation -> formatter.

Public entry points (see docs/language.md, "Python API"):
`load_spaces(path)`, `loads(text, file)`, `check(path)`, `parse(text, file)`, `format_text(text)`;
every user-facing failure is a `SpaceError` carrying `Diagnostic`s. The IR lives in `ir`,
the regime parameters of any operator come from `regime.regime(op)`.
"""

from deos_dsl.errors import DeosError, Diagnostic, SpaceError

from .api import check, format_text, load_spaces, loads, parse

__all__ = ["DeosError", "Diagnostic", "SpaceError", "check", "format_text", "load_spaces", "loads", "parse"]
