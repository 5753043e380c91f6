"""Semantic validation of resolved spaces; collects every problem, never stops at the first.

Invariant: checks read only `Num` literals (resolution folded everything) and skip poison
values (already reported). Each check appends to `self.diagnostics` and returns normally.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from deos_dsl.errors import Diagnostic

from . import ir
from .diagnostics import report, suggest
from .fold import is_poison
from .formatter import format_constraint, format_number, site_identity
from .regime import settings_of
from .resolve import constraint_key
from .vocab import CORNERS

BLOCK_LISTS = ("vision.layers", "decoder.layers", "projector")
MODULE_PATTERN = re.compile(r"^(\*\*|[A-Za-z0-9_*?]+)(\.(\*\*|[A-Za-z0-9_*?]+))*$")
RATIO_UNITS = ("", "%")
FLOP_UNITS = ("FLOP", "KFLOP", "MFLOP", "GFLOP", "TFLOP")
# Domain of each regime parameter: (low, high, low excluded). A fixed tau may be 0 (the exact
# hard assignment, as on the `merge` corner); a learned one stays above it.
DOMAINS = {"gamma": (0.0, 1.0, False), "tau": (0.0, math.inf, False), "theta": (0.0, 1.0, False),
           "rho": (0.0, math.inf, False), "nu": (0.0, 1.0, False)}

SHARP_CORNER = next(corner.name for corner in CORNERS.values() if corner.values["tau"] == 0)


def _unit_name(unit: str) -> str:
    return f"`{unit}`" if unit else "a plain number"


class Validator:
    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics

    def error(self, node: ir.Node, message: str, hint: str | None = None) -> None:
        report(self.diagnostics, node, message, hint)

    # ---- numbers ----------------------------------------------------------------------------
    def value(self, num: ir.Num, what: str, units: tuple[str, ...] = ("",), hint: str | None = None) -> float | None:
        """The value of `num` if its unit is allowed; None (reported unless poison) otherwise."""
        if is_poison(num):
            return None
        if num.unit not in units:
            names = [_unit_name(u) for u in units]
            allowed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
            self.error(num, f"units mismatch: {what} takes {allowed}, not {_unit_name(num.unit)}", hint)
            return None
        return num.value

    def integer(self, num: ir.Num, what: str, low: int, units: tuple[str, ...] = ("",)) -> None:
        value = self.value(num, what, units, "a percent cannot stand for a count; write a whole number" if "%" not in units else None)
        if value is not None and not (math.isfinite(value) and value.is_integer() and value >= low):
            self.error(num, f"{what} must be a whole number >= {low}, got {format_number(value)}")

    def bounded(self, num: ir.Num, what: str, low: float, high: float, low_open: bool = False,
                hint: str | None = None, high_open: bool = False) -> float | None:
        value = self.value(num, what)
        if value is None:
            return None
        if (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
            interval = f"{'(' if low_open else '['}{format_number(low)}, {format_number(high)}{')' if high_open else ']'}"
            self.error(num, f"{what} must be in {interval}, got {format_number(value)}", hint)
            return None
        return value

    def ratio(self, num: ir.Num, what: str, counts: bool = False) -> float | None:
        """A keep ratio in (0, 1], written `0.5` or `50%`; with `counts`, `N tokens` is also
        accepted here (and checked by the caller), and a plain integer above 1 gets a hint."""
        value = self.value(num, what, RATIO_UNITS + ("tokens",) if counts else RATIO_UNITS)
        if value is None or num.unit == "tokens":
            return None
        scale = 100.0 if num.unit == "%" else 1.0
        if not 0 < value <= scale:
            count = counts and num.unit == "" and value > 1 and value.is_integer()
            self.error(num, f"{what} must satisfy 0 < ratio <= 1 (0% < ratio <= 100%), got {format_number(value)}{num.unit}",
                       f"did you mean `{format_number(value)} tokens`?" if count else None)
            return None
        return value / scale

    # ---- selectors --------------------------------------------------------------------------
    def selector(self, selector: ir.Node) -> None:
        if isinstance(selector, ir.ModuleSelector):
            if not MODULE_PATTERN.match(selector.pattern):
                self.error(selector, f"invalid module path `{selector.pattern}`",
                           "dotted names, digits and globs (`*`, `?`, `**`), e.g. `model.language_model.layers.*`")
            return
        assert isinstance(selector, ir.RoleSelector)
        path = ".".join(selector.path)
        if path not in BLOCK_LISTS:
            what = f"unknown role `{selector.role}`" if selector.role not in ir.ROLES else f"unknown block list `{path}`"
            self.error(selector, what, suggest(path, BLOCK_LISTS))
        elif path == "projector" and selector.index is not None:
            self.error(selector.index, "`projector` is a single block and takes no index")
        elif path != "projector" and selector.index is None:
            self.error(selector, f"`{path}` needs an index", f"e.g. `{path}[*]`, `{path}[2:]` or `{path}[25%]`")
        for item in selector.index.items if selector.index else []:
            for position in [item.at] if isinstance(item, ir.Point) else [p for p in (item.start, item.stop) if p is not None]:
                self.layer_position(position)
            if isinstance(item, ir.Slice) and item.step is not None:
                self.integer(item.step, "a slice step", 1)

    def layer_position(self, num: ir.Num) -> None:
        value = self.value(num, "a layer index", RATIO_UNITS, "write an integer or a depth percent such as `25%`")
        if value is None:
            return
        if num.unit == "%" and not 0 <= value <= 100:
            self.error(num, f"a depth percent must be in [0%, 100%], got {format_number(value)}%")
        elif num.unit == "" and not (math.isfinite(value) and value.is_integer()):
            self.error(num, f"a layer index must be an integer, got {format_number(value)}", "use a percent for depth-relative positions, e.g. `25%`")

    # ---- site settings ----------------------------------------------------------------------
    def site(self, site: ir.SiteSettings) -> None:
        if isinstance(site.activate, ir.ActivateLearned):
            self.bounded(site.activate.init, "an activation init", 0, 1, low_open=True,
                         hint="an init probability of 0 or 1 is `activate: off` or `activate: on`", high_open=True)
        self.retain(site.retain)
        if site.operator is not None:
            self.operator(site.operator)

    def retain(self, retain: ir.Node | None) -> None:
        if isinstance(retain, ir.RetainFixed):
            self.amount(retain.amount)
        elif isinstance(retain, ir.RetainDrop):
            self.integer(retain.amount, "`drop` (a token count)", 1, ("", "tokens"))
        elif isinstance(retain, ir.RetainChoices):
            for option in retain.options:
                self.amount(option)
            kinds = {o.unit == "tokens" for o in retain.options if not is_poison(o)}
            if len(kinds) > 1:
                self.error(retain, "choices mix token counts and ratios", "use only ratios or only `tokens`")
        elif isinstance(retain, ir.RetainLearned):
            lo, hi, init = (self.ratio(n, "a learned retain bound") for n in (retain.lo, retain.hi, retain.init))
            self.interval(retain, lo, hi, init)

    def amount(self, num: ir.Num) -> None:
        if num.unit == "tokens":
            self.integer(num, "a retained token count", 1, ("tokens",))
        else:
            self.ratio(num, "retain", counts=True)

    def interval(self, node: ir.Node, lo: float | None, hi: float | None, init: float | None) -> None:
        if lo is not None and hi is not None and lo >= hi:
            self.error(node, f"empty range: lo ({format_number(lo)}) must be below hi ({format_number(hi)})")
        elif None not in (lo, hi, init) and not lo <= init <= hi:
            self.error(node, f"init {format_number(init)} is outside [{format_number(lo)}, {format_number(hi)}]", "lo <= init <= hi")

    def operator(self, op: ir.Operator) -> None:
        allowed = settings_of(op.form)
        for name in ir.SETTINGS:
            if getattr(op, name) is not None and name not in allowed:
                self.error(op, f"`{op.form}` does not take `{name}`",
                           f"`{op.form}` takes {', '.join(sorted(allowed)) or 'no setting'}; use `unified {{ ... }}` for other regimes")
        for name in ir.REGIME:
            param = getattr(op, name)
            if param is not None:
                self.param(name, param)
        if op.window is not None and min(op.window) < 1:
            self.error(op, f"a window must be at least 1x1, got {op.window[0]}x{op.window[1]}")
        if op.width is not None:
            self.bounded(op.width, "a locality width", 0, math.inf, low_open=True)
        if isinstance(op.into, ir.IntoExtra):
            self.integer(op.into.count, "`extra(...)` (a token count)", 1)
        if op.recycle is not None:
            self.ratio(op.recycle, "recycle")

    def param(self, name: str, param: ir.Node) -> None:
        low, high, low_open = DOMAINS[name]
        if isinstance(param, ir.FixedParam):
            self.bounded(param.value, f"`{name}`", low, high, low_open)
            return
        hint = f"a learned tau stays above 0: the limit tau -> 0 is a fixed `tau: 0` (the `{SHARP_CORNER}` corner's)" \
            if name == "tau" else None
        assert isinstance(param, ir.LearnedParam)
        open_low = low_open or param.scale == "log" or name == "tau"
        lo, hi, init = (self.bounded(n, f"`{name}`", low, high, open_low, hint) for n in (param.lo, param.hi, param.init))
        if hi is not None and math.isinf(hi):
            self.error(param.hi, f"a learned `{name}` needs a finite upper bound")
            hi = None
        self.interval(param, lo, hi, init)

    # ---- space-level ------------------------------------------------------------------------
    def tokens(self, tokens: ir.Tokens) -> None:
        reducible = tokens.reducible
        if reducible is not None and reducible.kind == "span":
            for end in (reducible.start, reducible.end):
                self.integer(end, "a token position", 0)
            if not (is_poison(reducible.start) or is_poison(reducible.end)) and reducible.start.value >= reducible.end.value:
                self.error(reducible, "an empty span: start must be below end", "`span(start, end)` is [start, end)")
        for kind, count in Counter(tokens.protected or []).items():
            if count > 1:
                self.error(tokens, f"`{kind}` is listed twice in `protected`")

    def constraint(self, constraint: ir.Constraint, space: ir.Space) -> None:
        if constraint.site is not None:
            self.selector(constraint.site)
        bound = constraint.bound
        if constraint.quantity == "flops":
            units = ("dense", *FLOP_UNITS)
            hint = f"relative: `{format_number(bound.value / 100 if bound.unit == '%' else bound.value)} * dense`; absolute: `1.2 TFLOP`"
            value = self.value(bound, "a FLOPs limit", units, hint)
        else:
            hint = "a token budget is a count (`64`, `64 tokens`) or a share of the reducible tokens (`11%`)"
            value = self.value(bound, "a token budget", ("", "tokens", "%"), hint)
            if value is not None and bound.unit != "%" and not (math.isfinite(value) and value.is_integer()):
                pct = f"did you mean `{format_number(value * 100)}%`?" if 0 < value < 1 else None
                self.error(bound, f"a token count must be a whole number, got {format_number(value)}", pct)
                value = None
            if value is not None and bound.unit == "%" and value > 100:
                self.error(bound, f"a share of the reducible tokens cannot exceed 100%, got {format_number(value)}%")
        if value is not None and value <= 0 and constraint.op == "<=":
            self.error(constraint, f"unsatisfiable constraint `{format_constraint(constraint)}`", "a budget must be positive")
        elif value is not None and constraint.op == "<=" and constraint.quantity != "flops" and bound.unit == "%":
            self.reachable(constraint, value / 100, space)

    def reachable(self, constraint: ir.Constraint, budget: float, space: ir.Space) -> None:
        """Flag a percent budget that even the smallest fixed retains cannot reach."""
        floor = 1.0
        for site in space.sites:
            if isinstance(site.activate, ir.ActivateFixed) and not site.activate.on:
                continue
            single = len(site.selectors) == 1 and isinstance(site.selectors[0], ir.RoleSelector) and (
                site.selectors[0].index is None or (not site.selectors[0].index.every and len(site.selectors[0].index.items) == 1
                                                    and isinstance(site.selectors[0].index.items[0], ir.Point)))
            smallest = _smallest_ratio(site.retain)
            if smallest is None or (not single and smallest < 1):
                return  # a count, or a reduction repeated over an unknown number of blocks
            floor *= smallest
        if floor > budget:
            why = "no site of this space can remove tokens" if floor == 1 else (
                f"at least {format_number(round(floor * 100, 4))}% of the reducible tokens remain with every site at its smallest retain")
            self.error(constraint, f"unsatisfiable constraint `{format_constraint(constraint)}`: {why}",
                       "lower the sites' retain or raise the budget")

    def bounds(self, space: ir.Space) -> None:
        """Contradictory lower and upper bounds on the same quantity (same unit)."""
        for upper in space.constraints:
            for lower in space.constraints:
                same = constraint_key(upper)[:2] == constraint_key(lower)[:2] and upper.bound.unit == lower.bound.unit
                if same and upper.op == "<=" and lower.op == ">=" and lower.bound.value > upper.bound.value:
                    self.error(lower, f"contradictory bounds: `{format_constraint(lower)}` and `{format_constraint(upper)}`",
                               "the lower bound exceeds the upper bound")

    def objective_and_policy(self, objective: ir.Objective, policy: ir.Policy) -> None:
        if objective.align is not None:
            self.bounded(objective.align, "the alignment weight `align`", 0, math.inf)
        for name, low_open in (("lr", True), ("dual_step", True), ("penalty", False), ("snap", False),
                               ("decide", False)):
            num = getattr(policy, name)
            if num is not None:
                self.bounded(num, f"`{name}`", 0, math.inf, low_open)
        if policy.steps is not None:
            self.integer(policy.steps, "`steps`", 1)
        if policy.seed is not None:
            self.integer(policy.seed, "`seed`", 0)
        if policy.anneal is not None:
            for num in (policy.anneal.start, policy.anneal.end):
                if num is not None:
                    self.bounded(num, "an annealing temperature", 0, math.inf, low_open=True)

    def space(self, space: ir.Space) -> None:
        """All checks of one complete resolved space."""
        if space.tokens is not None:
            self.tokens(space.tokens)
        for site in space.sites:
            for selector in site.selectors:
                self.selector(selector)
            self.site(site)
        for constraint in space.constraints:
            self.constraint(constraint, space)
        self.bounds(space)
        if space.objective is not None and space.policy is not None:
            self.objective_and_policy(space.objective, space.policy)

    def body(self, decl: ir.Space) -> None:
        """Checks on a space as written: the same site or constraint twice in one body."""
        seen: dict[str, ir.Site] = {}
        for site in decl.sites:
            key = site_identity(site)
            if key in seen:
                self.error(site, f"site `{key}` is declared twice in space `{decl.name}`", "merge the two blocks")
            seen[key] = site
        keys: dict[tuple[str, str, str], ir.Constraint] = {}
        for constraint in decl.constraints:
            key = constraint_key(constraint)
            if key in keys:
                quantity = key[0] if not key[1] else f"tokens.after({key[1]})"
                self.error(constraint, f"conflicting bounds: `{quantity} {key[2]}` is already constrained in this space",
                           f"keep one of this line and line {keys[key].span.line if keys[key].span else '?'}")
            keys[key] = constraint


def _smallest_ratio(retain: ir.Node | None) -> float | None:
    """The smallest keep ratio a retain setting allows; None if it is a count or unknown."""
    if isinstance(retain, ir.RetainFixed) and retain.amount.unit in RATIO_UNITS:
        values = [retain.amount]
    elif isinstance(retain, ir.RetainChoices) and all(o.unit in RATIO_UNITS for o in retain.options):
        values = retain.options
    elif isinstance(retain, ir.RetainLearned):
        values = [retain.lo]
    else:
        return None
    ratios = [v.value / (100 if v.unit == "%" else 1) for v in values]
    return min(ratios) if all(0 < r <= 1 for r in ratios) else None
