"""The .deos front end: grammar -> parse tree -> IR -> resolution -> validation -> formatter.

Public entry points (see docs/language.md, "Python API"):
`load_spaces(path)`, `loads(text, file)`, `check(path)`, `parse(text, file)`, `format_text(text)`;
every user-facing failure is a `DeosError` carrying `Diagnostic`s. The IR lives in `ir`,
the regime parameters of any operator come from `regime.regime(op)`.
"""

from .api import check, format_text, load_spaces, loads, parse
from .diagnostics import DeosError, Diagnostic

__all__ = ["DeosError", "Diagnostic", "check", "format_text", "load_spaces", "loads", "parse"]
