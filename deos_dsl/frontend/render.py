"""Rich rendering: diagnostics with source line and caret, resolved spaces as trees."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from deos_dsl.errors import Diagnostic

from . import ir
from .formatter import format_constraint, format_site_key, format_value

_STYLE = {"error": "bold red", "warning": "bold yellow"}


MAX_MESSAGE, MAX_LINE, LINE_LEAD = 300, 160, 60  # characters shown of a message and of a source line


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text`, cut in the middle to `limit` characters (an offending 50 MB token stays one line)."""
    if len(text) <= limit:
        return text
    keep = (limit - 1) // 2
    return f"{text[:keep]}…{text[-keep:]}"


def _line_window(line: str, col: int, width: int) -> tuple[str, int, int]:
    """The part of a long source `line` around column `col` (1-based): `(shown, col, width)`
    re-based on what is shown, at most `MAX_LINE` characters plus `…` marks."""
    if len(line) <= MAX_LINE:
        return line, col, width
    start = max(0, min(col - 1 - LINE_LEAD, len(line) - MAX_LINE))
    shown = ("…" if start else "") + line[start:start + MAX_LINE] + ("…" if start + MAX_LINE < len(line) else "")
    new_col = col - start + (1 if start else 0)
    return shown, new_col, max(1, min(width, MAX_LINE - (col - 1 - start)))


def diagnostic_text(diag: Diagnostic) -> Text:
    """`file:line:col: error: message`, the source line, a caret under the span, the hint; a long
    message, hint or line is cut (`shorten`, `_line_window`) so output stays a few lines."""
    text = Text()
    text.append(f"{diag.location()}: ", style="bold")
    text.append(f"{diag.severity}: ", style=_STYLE[diag.severity])
    text.append(shorten(diag.message), style="bold")
    if diag.source_line is not None:
        gutter = f"{diag.line:>5} | "
        end = diag.end_col if diag.end_line == diag.line and diag.end_col and diag.end_col > diag.col else None
        width = max(1, (end if end is not None else len(diag.source_line) + 1) - diag.col)
        shown, col, width = _line_window(diag.source_line.expandtabs(1), diag.col, width)
        text.append("\n" + gutter + shown)
        text.append("\n" + " " * (len(gutter) + col - 1))
        text.append("^" + "~" * (width - 1), style="bold green")
    if diag.hint:
        text.append("\n  hint: ", style="cyan")
        text.append(shorten(diag.hint))
    return text


def render_diagnostics(diagnostics: list[Diagnostic], console: Console) -> None:
    for diag in diagnostics:
        console.print(diagnostic_text(diag), soft_wrap=True, highlight=False)


def _entries(tree: Tree, node: ir.Node | None, fields: tuple[str, ...]) -> None:
    for key in fields:
        value = getattr(node, key, None)
        if value is None or value == []:
            continue
        if isinstance(value, ir.Operator):
            branch = tree.add(f"[bold]{key}[/]: {value.form}")
            _entries(branch, value, ir.SETTINGS)
        else:
            tree.add(Text.assemble((f"{key}", "bold"), f": {format_value(value)}"))


def space_tree(space: ir.Space) -> Tree:
    """A resolved space as a tree: tokens, sites with their settings, constraints, objective, policy."""
    tree = Tree(Text.assemble(("space ", "bold"), (space.name, "bold magenta")))
    _entries(tree.add("[bold]tokens[/]"), space.tokens, ("reducible", "protected"))
    for site in space.sites:
        _entries(tree.add(Text.assemble(("site ", "bold"), format_site_key(site.selectors))), site, ir.SITE_FIELDS)
    if space.constraints:
        constraints = tree.add("[bold]constraints[/]")
        for constraint in space.constraints:
            constraints.add(format_constraint(constraint).removeprefix("constraint "))
    _entries(tree.add("[bold]objective[/]"), space.objective, ("task", "align"))
    _entries(tree.add("[bold]policy[/]"), space.policy, ir.fields_of(ir.Policy))
    return tree
