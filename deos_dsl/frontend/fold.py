"""Constant folding with units: every `Expr` becomes a `Num`.

Invariant: `Folder.expr` never raises for bad input; an expression it cannot evaluate is
reported once and becomes a *poison* `Num` (value NaN) that later checks skip silently.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from deos_dsl.errors import Diagnostic

from . import ir
from .diagnostics import report, suggest


def poison(span: ir.Span | None) -> ir.Num:
    return ir.Num(span=span, value=math.nan)


def is_poison(num: ir.Num) -> bool:
    return math.isnan(num.value)


def _unit(unit: str) -> str:
    return f"`{unit}`" if unit else "a plain number"


class Folder:
    """Folds expressions against a scope of already-folded constants."""

    def __init__(self, scope: dict[str, ir.Num], diagnostics: list[Diagnostic], pending: dict[str, ir.Const] | None = None) -> None:
        self.scope = scope
        self.diagnostics = diagnostics
        self.pending = pending or {}  # constants declared later in the file (for a precise message)

    def _error(self, node: ir.Node, message: str, hint: str | None = None) -> ir.Num:
        report(self.diagnostics, node, message, hint)
        return poison(node.span)

    def expr(self, node: ir.Node) -> ir.Num:
        """The value of an expression node (a poison Num after reporting, on error)."""
        if isinstance(node, ir.Num):
            return node
        if isinstance(node, ir.Ref):
            return self._ref(node)
        if isinstance(node, ir.Neg):
            value = self.expr(node.operand)
            return ir.Num(span=node.span, value=-value.value, unit=value.unit)
        if isinstance(node, ir.WithUnit):
            value = self.expr(node.operand)
            if value.unit and not is_poison(value):
                return self._error(node, f"`{node.unit}` applied to a value that already has unit `{value.unit}`")
            return ir.Num(span=node.span, value=value.value, unit=node.unit)
        assert isinstance(node, ir.Binary)
        return self._binary(node, self.expr(node.left), self.expr(node.right))

    def _ref(self, node: ir.Ref) -> ir.Num:
        if node.name in self.scope:
            found = self.scope[node.name]
            return ir.Num(span=node.span, value=found.value, unit=found.unit)
        if node.name in self.pending:
            line = self.pending[node.name].span.line if self.pending[node.name].span else "?"
            return self._error(node, f"constant `{node.name}` is used before its definition (line {line})", "define constants before their use")
        return self._error(node, f"unknown constant `{node.name}`", suggest(node.name, self.scope))

    def _binary(self, node: ir.Binary, left: ir.Num, right: ir.Num) -> ir.Num:
        if is_poison(left) or is_poison(right):
            return poison(node.span)
        unit = self._result_unit(node, left.unit, right.unit)
        if unit is None:
            return poison(node.span)
        try:
            value = _apply(node.op, left.value, right.value)
        except ZeroDivisionError:
            return self._error(node, f"cannot evaluate `{node.op}` here: division by zero")
        except OverflowError:
            return self._error(node, f"cannot evaluate `{node.op}` here: the result is too large (over {sys.float_info.max:.3g})",
                               "use a smaller number")
        except ValueError as error:
            return self._error(node, f"cannot evaluate `{node.op}` here: {error}")
        if math.isnan(value):
            return self._error(node, "this expression has no value (inf - inf, 0 * inf, ...)")
        return ir.Num(span=node.span, value=value, unit=unit)

    def _result_unit(self, node: ir.Binary, left: str, right: str) -> str | None:
        """The unit of `left op right`, or None after reporting a units mismatch."""
        if node.op in "+-" and left == right:
            return left
        if node.op == "*" and not (left and right):
            return left or right
        if node.op == "/" and (not right or left == right):
            return "" if left == right else left
        if node.op == "^" and not (left or right):
            return ""
        self._error(node, f"units mismatch: `{node.op}` between {_unit(left)} and {_unit(right)}",
                    "units combine as: same unit for + and -, at most one unit in a product, plain exponents")
        return None

    def node(self, node: Any) -> Any:
        """Fold every expression inside an IR value (node, list, tuple or scalar)."""
        if isinstance(node, (ir.Num, ir.Ref, ir.Neg, ir.WithUnit, ir.Binary)):
            return self.expr(node)
        if isinstance(node, ir.Node):
            updates = {name: self.node(getattr(node, name)) for name in ir.fields_of(type(node))}
            return node.model_copy(update=updates)
        if isinstance(node, list):
            return [self.node(item) for item in node]
        return node


def _apply(op: str, left: float, right: float) -> float:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if op == "/":
        if right == 0:
            raise ZeroDivisionError("division by zero")
        return left / right
    value = left**right
    if isinstance(value, complex):
        raise ValueError("negative base with a fractional exponent")
    return value
