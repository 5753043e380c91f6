"""Rich rendering: diagnostics with source line and caret, resolved spaces as trees."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from deos_dsl.errors import Diagnostic

from . import ir
from .formatter import format_constraint, format_site_key, format_value

_STYLE = {"error": "bold red", "warning": "bold yellow"}


def diagnostic_text(diag: Diagnostic) -> Text:
    """`file:line:col: error: message`, the source line, a caret under the span, the hint."""
    text = Text()
    text.append(f"{diag.location()}: ", style="bold")
    text.append(f"{diag.severity}: ", style=_STYLE[diag.severity])
    text.append(diag.message, style="bold")
    if diag.source_line is not None:
        gutter = f"{diag.line:>5} | "
        end = diag.end_col if diag.end_line == diag.line and diag.end_col and diag.end_col > diag.col else None
        width = max(1, (end if end is not None else len(diag.source_line) + 1) - diag.col)
        text.append("\n" + gutter + diag.source_line.expandtabs(1))
        text.append("\n" + " " * (len(gutter) + diag.col - 1))
        text.append("^" + "~" * (width - 1), style="bold green")
    if diag.hint:
        text.append("\n  hint: ", style="cyan")
        text.append(diag.hint)
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
