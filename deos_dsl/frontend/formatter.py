"""IR -> canonical .deos text.

Invariants: `parse(format_module(m)) == m` for every parsed module `m` (structural equality),
formatting is idempotent, and comments attached by the builder are written back next to
the entries they were attached to. Canonical layout: two-space indent, one entry per line,
fixed entry order, a blank line between top-level items and between the sections of a space.
"""

from __future__ import annotations

import math

from . import ir
from .vocab import SCORES, UNIFIED

INDENT = "  "
_BINARY_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "^": 4}
_NEG, _UNIT, _ATOM = 3, 5, 6


def format_number(value: float) -> str:
    """Shortest text that parses back to the same float (`inf`, `64`, `0.05`, `1e-05`)."""
    value = float(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _precedence(expr: ir.Node) -> int:
    if isinstance(expr, ir.Binary):
        return _BINARY_PREC[expr.op]
    if isinstance(expr, ir.Neg) or (isinstance(expr, ir.Num) and expr.value < 0):
        return _NEG
    if isinstance(expr, ir.Num) and expr.unit == "dense" and expr.value != 1:
        return _BINARY_PREC["*"]
    if isinstance(expr, ir.WithUnit) or (isinstance(expr, ir.Num) and expr.unit not in ("", "dense")):
        return _UNIT
    return _ATOM


def format_expr(expr: ir.Node, minimum: int = 0) -> str:
    """Expression text, parenthesised when its precedence is below `minimum`."""
    text = _expr_text(expr)
    return f"({text})" if _precedence(expr) < minimum else text


def _expr_text(expr: ir.Node) -> str:
    if isinstance(expr, ir.Num):
        return _num_text(expr)
    if isinstance(expr, ir.Ref):
        return expr.name
    if isinstance(expr, ir.Neg):
        return "-" + format_expr(expr.operand, _NEG)
    if isinstance(expr, ir.WithUnit):
        return format_expr(expr.operand, _ATOM) + _unit_suffix(expr.unit)
    assert isinstance(expr, ir.Binary)
    prec = _BINARY_PREC[expr.op]
    if expr.op == "^":
        return f"{format_expr(expr.left, _UNIT)} ^ {format_expr(expr.right, _NEG)}"
    return f"{format_expr(expr.left, prec)} {expr.op} {format_expr(expr.right, prec + 1)}"


def _unit_suffix(unit: str) -> str:
    return unit if unit == "%" else f" {unit}"


def _num_text(num: ir.Num) -> str:
    if num.value < 0:
        return "-" + format_expr(num.model_copy(update={"value": -num.value}), _NEG)
    if num.unit == "dense":
        return "dense" if num.value == 1 else f"{format_number(num.value)} * dense"
    return format_number(num.value) + (_unit_suffix(num.unit) if num.unit else "")


def format_selector(selector: ir.Node) -> str:
    if isinstance(selector, ir.ModuleSelector):
        return f'"{selector.pattern}"'
    assert isinstance(selector, ir.RoleSelector)
    return ".".join(selector.path) + (_index_text(selector.index) if selector.index else "")


def _index_text(index: ir.Index) -> str:
    if index.every:
        return "[*]"
    return "[" + ", ".join(_index_item(item) for item in index.items) + "]"


def _index_item(item: ir.Node) -> str:
    if isinstance(item, ir.Point):
        return format_expr(item.at)
    assert isinstance(item, ir.Slice)
    parts = [format_expr(p) if p is not None else "" for p in (item.start, item.stop)]
    return ":".join(parts) + (f":{format_expr(item.step)}" if item.step is not None else "")


def format_site_key(selectors: list[ir.Node]) -> str:
    """The canonical selector list of a site."""
    return ", ".join(format_selector(s) for s in selectors)


def site_identity(site: ir.Site) -> str:
    """A site's identity for `extends` overrides and the duplicate check: its selector list and,
    when written, its `at:` (two sites may reduce one block at two positions)."""
    key = format_site_key(site.selectors)
    return key if site.at is None else f"{key} (at: {site.at})"


def _range(lo: ir.Node, hi: ir.Node, init: ir.Node) -> str:
    return f"[{format_expr(lo)}, {format_expr(hi)}] init {format_expr(init)}"


def format_value(value: object) -> str:
    """The text after `key:` for any entry value of a block."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return f"{value[0]}x{value[1]}"
    if isinstance(value, list):
        return ", ".join(value)
    if isinstance(value, (ir.Num, ir.Ref, ir.Neg, ir.WithUnit, ir.Binary)):
        return format_expr(value)
    return _VALUE_TEXT[type(value)](value)


_VALUE_TEXT = {
    ir.ActivateFixed: lambda v: "on" if v.on else "off",
    ir.ActivateLearned: lambda v: f"learned init {format_expr(v.init)}",
    ir.RetainFixed: lambda v: format_expr(v.amount),
    ir.RetainDrop: lambda v: f"drop {format_expr(v.amount)}",
    ir.RetainChoices: lambda v: "choices(" + ", ".join(format_expr(o) for o in v.options) + ")",
    ir.RetainLearned: lambda v: "learned " + _range(v.lo, v.hi, v.init),
    ir.Score: lambda v: SCORES[v.kind].text(v.option),
    ir.FixedParam: lambda v: format_expr(v.value),
    ir.LearnedParam: lambda v: "learned " + ("log " if v.scale == "log" else "") + _range(v.lo, v.hi, v.init),
    ir.IntoKept: lambda v: "kept",
    ir.IntoExtra: lambda v: f"extra({format_expr(v.count)})",
    ir.Reducible: lambda v: v.kind if v.kind != "span" else f"span({format_expr(v.start)}, {format_expr(v.end)})",
    ir.Anneal: lambda v: f"constant({format_expr(v.start)})" if v.schedule == "constant"
    else f"{v.schedule}(from: {format_expr(v.start)}, to: {format_expr(v.end)})",
}


class _Writer:
    """Accumulates indented lines, writing each statement's comments around it."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "" and not self.lines[-1].endswith("{"):
            self.lines.append("")

    def line(self, text: str, node: ir.Node, key: str = "", extra: list[str] = ()) -> None:
        pad = INDENT * self.depth
        self.lines.extend(pad + c for c in [*node.comments.get(key, []), *extra])
        trailing = node.comments.get(key + "#", [])
        self.lines.append(pad + text + ("  " + "  ".join(trailing) if trailing else ""))

    def open(self, text: str, node: ir.Node, key: str = "") -> None:
        self.line(text + " {", node, key)
        self.depth += 1

    def close(self, node: ir.Node) -> None:
        self.lines.extend(INDENT * self.depth + c for c in node.comments.get("}", []))
        self.depth -= 1
        if self.lines[-1].endswith(" {"):
            self.lines[-1] += "}"  # an empty block stays on its line: `site projector {}`
        else:
            self.lines.append(INDENT * self.depth + "}")

    def entries(self, node: ir.Node, fields: tuple[str, ...]) -> None:
        for key in fields:
            value = getattr(node, key)
            if value is None or value == []:
                continue
            if isinstance(value, ir.Operator):
                self.operator(node, key, value)
            else:
                self.line(f"{key}: {format_value(value)}", node, key)

    def operator(self, owner: ir.Node, key: str, op: ir.Operator) -> None:
        if op.form == UNIFIED:
            self.open(f"{key}: {UNIFIED}", owner, key)
            self.entries(op, ir.SETTINGS)
            self.close(op)
            return
        settings = [f"{name}: {format_value(getattr(op, name))}" for name in ir.SETTINGS if getattr(op, name) is not None]
        call = f"{op.form}({', '.join(settings)})" if settings else op.form
        self.line(f"{key}: {call}", owner, key, extra=[c for cs in op.comments.values() for c in cs])

    def block(self, header: str, node: ir.Node, fields: tuple[str, ...]) -> None:
        self.blank()
        self.open(header, node)
        self.entries(node, fields)
        self.close(node)

    def space(self, space: ir.Space) -> None:
        self.blank()
        self.open(f"space {space.name}" + (f" extends {space.parent}" if space.parent else ""), space)
        if space.tokens is not None:
            self.block("tokens", space.tokens, ("reducible", "protected"))
        if space.defaults is not None:
            self.block("defaults", space.defaults, ir.SITE_FIELDS)
        for site in space.sites:
            self.block(f"site {format_site_key(site.selectors)}", site, ir.SITE_FIELDS)
        if space.constraints:
            self.blank()
        for constraint in space.constraints:
            self.line(format_constraint(constraint), constraint)
        if space.objective is not None:
            self.block("objective", space.objective, ("task", "align"))
        if space.policy is not None:
            self.block("policy", space.policy, ir.fields_of(ir.Policy))
        self.close(space)


def format_constraint(constraint: ir.Constraint) -> str:
    quantity = constraint.quantity
    if constraint.site is not None:
        quantity = f"tokens.after({format_selector(constraint.site)})"
    return f"constraint {quantity} {constraint.op} {format_expr(constraint.bound)}"


def format_module(module: ir.Module) -> str:
    """The canonical text of a whole file."""
    writer = _Writer()
    writer.lines.extend([*module.comments.get("{", []), ""] if module.comments.get("{") else [])
    for imp in module.imports:
        writer.line(f'import "{imp.path}"', imp)
    writer.blank()
    for const in module.consts:
        writer.line(f"const {const.name} = {format_expr(const.value)}", const)
    for space in module.spaces:
        writer.space(space)
    writer.lines.extend(module.comments.get("}", []))
    while writer.lines and writer.lines[0] == "":
        writer.lines.pop(0)
    return "\n".join(writer.lines).rstrip("\n") + "\n"


def format_spaces(spaces: list[ir.Space]) -> str:
    """Canonical text of stand-alone (e.g. resolved) spaces, as one file."""
    return format_module(ir.Module(file="<spaces>", spaces=spaces))
