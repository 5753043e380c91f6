"""Cost reports: rich tables for people, JSON for machines, the conventions stated in both.

- blocks: per block its stream length `n` (a symbolic expression), its FLOPs formula in `n`
  and `B` (`local_formula`), dense and reduced FLOPs and its share of the dense total; then
  the nodes outside every block, each site's overhead and the dead code (not counted);
- sites: per site its symbol, the stream length and the reducible tokens entering it, the
  tokens leaving it and the stream length after it (expression, dense value -> value under the
  schedule), active or not;
- a summary line: dense, reduced, ratio.
"""

from __future__ import annotations

from typing import Any

import sympy
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .model import Cost, Schedule

N = sympy.Symbol("n", integer=True, positive=True)
UNITS = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def human(flops: float) -> str:
    """`9067329847296 -> '9.07 TFLOP'`."""
    for scale, prefix in UNITS:
        if abs(flops) >= scale:
            return f"{flops / scale:.3g} {prefix}FLOP"
    return f"{flops:.3g} FLOP"


def local_formula(expr: sympy.Expr, length: sympy.Expr | None) -> sympy.Expr:
    """`expr` written in `n` = `length` when it depends on the length's symbols only through
    it (a block's FLOPs in its own token count), else `expr` itself."""
    if length is None or not length.free_symbols:
        return expr
    for symbol in sorted(length.free_symbols, key=lambda s: s.name, reverse=True):
        if length.coeff(symbol) == 1 and (length - symbol).free_symbols.isdisjoint({symbol}):
            local = sympy.expand(expr.xreplace({symbol: N - (length - symbol)}))
            if local.free_symbols.isdisjoint(length.free_symbols):
                return local
    return expr


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def cost_json(cost: Cost, schedule: Schedule) -> dict[str, Any]:
    """The report as JSON-ready data (exact integers; formulas as sympy strings)."""
    dense_point, point = cost.point(), cost.point(schedule)
    dense, reduced = cost.dense_flops(), cost.flops(schedule)
    blocks = []
    for group in cost.groups:
        total = group.total()
        value = cost.evaluate(total, dense_point)
        blocks.append({
            "name": group.name, "role": group.role, "tokens": None if group.length is None else str(group.length),
            "formula": str(local_formula(total, group.length)), "dense": value,
            "reduced": cost.evaluate(total, point), "share": _share(value, dense),
            "by_kind": {kind: cost.evaluate(expr, dense_point) for kind, expr in group.flops.items()},
        })
    sites = []
    for site in cost.sites:
        def count(expr: sympy.Expr) -> dict[str, Any]:
            return {"formula": str(expr), "dense": cost.evaluate(expr, dense_point), "reduced": cost.evaluate(expr, point)}

        sites.append({
            "name": site.name, "block": site.block, "symbol": site.symbol.name, "gate": site.gate.name,
            "active": bool(point[site.gate]), "tokens_in": count(site.tokens_in), "entering": count(site.entering),
            "leaving": count(site.symbol), "tokens_out": count(site.tokens_out),
            "overhead": {"formula": str(site.overhead()), "reduced": cost.evaluate(site.gate * site.overhead(), point)},
        })
    return {
        "model": cost.model_name, "space": cost.space_name, "conventions": cost.conventions.describe(),
        "symbols": {symbol.name: value for symbol, value in sorted(cost.base.items(), key=lambda i: i[0].name)},
        "formula": {"dense": str(cost.dense_formula()), "reduced": str(cost.reduced())},
        "dense": dense, "reduced": reduced, "ratio": _share(reduced, dense),
        "blocks": blocks, "sites": sites, "uncounted": cost.uncounted,
        "dead": {"dense": cost.evaluate(sympy.Add(*cost.dead.values()), dense_point),
                 "reduced": cost.evaluate(sympy.Add(*cost.dead.values()), point)},
    }


def _count(entry: dict[str, Any]) -> str:
    moved = f" -> {entry['reduced']}" if entry["reduced"] != entry["dense"] else ""
    return f"{entry['formula']} = {entry['dense']}{moved}"


def cost_tables(cost: Cost, schedule: Schedule) -> Group:
    """The report as rich renderables: conventions, blocks, sites, summary."""
    data = cost_json(cost, schedule)
    symbols = ", ".join(f"{name} = {value}" for name, value in data["symbols"].items())
    head = Text(f"cost of space `{cost.space_name}` on {cost.model_name} ({symbols})\nconventions:\n"
                + "\n".join(f"  - {line}" for line in data["conventions"]))
    blocks = Table(title="FLOPs per block (n = the block's tokens)", title_justify="left")
    for column in ("block", "n", "formula", "dense", "reduced", "share"):
        numeric = column in ("dense", "reduced", "share")
        blocks.add_column(column, justify="right" if numeric else "left", no_wrap=numeric, overflow="fold")
    for row in data["blocks"]:
        blocks.add_row(row["name"], row["tokens"] or "-", row["formula"], human(row["dense"]), human(row["reduced"]),
                       f"{row['share']:.1%}")
    for site in data["sites"]:
        blocks.add_row(f"site {site['name']} (overhead)", "-", site["overhead"]["formula"], "-",
                       human(site["overhead"]["reduced"]), "-")
    sites = Table(title="tokens per site (formula = dense -> reduced)", title_justify="left")
    for column in ("site", "active", "tokens in", "reducible in", "reducible out", "tokens out"):
        sites.add_column(column, overflow="fold")
    for site in data["sites"]:
        sites.add_row(site["name"], "yes" if site["active"] else "no", _count(site["tokens_in"]),
                      _count(site["entering"]), _count(site["leaving"]), _count(site["tokens_out"]))
    if cost.dead:
        blocks.add_row("dead code (not counted)", "-", str(sympy.Add(*cost.dead.values())), human(data["dead"]["dense"]),
                       human(data["dead"]["reduced"]), "-")
    summary = Text(f"dense {human(data['dense'])} ({data['dense']}), reduced {human(data['reduced'])} "
                   f"({data['reduced']}), ratio {data['ratio']:.2%}")
    parts: list[Any] = [head, blocks] + ([sites] if cost.sites else []) + [summary]
    if cost.uncounted:
        parts.append(Text("not counted (could not be traced to ATen ops): " + "; ".join(cost.uncounted)))
    return Group(*parts)
