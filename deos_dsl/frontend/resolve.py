"""Resolution: constants, imports and `extends` -> complete, folded `Space`s.

Invariants of the output (see `ir.py`): no parent, no defaults, every site has its four
settings, tokens/objective/policy are filled with the documented defaults, every Expr is a
`Num`. Override rule for `extends`: blocks merge entry by entry (the child's entry wins);
sites with the same selector list merge the same way; a constraint replaces the parent's
constraint on the same quantity (and site) in the same direction; anything else is appended.
"""

from __future__ import annotations

from typing import Any, TypeVar

from deos_dsl.errors import Diagnostic

from . import ir
from .diagnostics import report, suggest
from .fold import Folder
from .formatter import format_selector, format_site_key, site_identity
from .loader import Program

N = TypeVar("N", bound=ir.Node)

DEFAULT_TOKENS = ir.Tokens(reducible=ir.Reducible(kind="visual"), protected=[])
DEFAULT_OBJECTIVE = ir.Objective(task="cross_entropy", align=ir.Num(value=0.0))
DEFAULT_POLICY = ir.Policy(
    optimizer="adam", lr=ir.Num(value=0.05), steps=ir.Num(value=300), relaxation="hard_concrete",
    anneal=ir.Anneal(schedule="exponential", start=ir.Num(value=1.0), end=ir.Num(value=0.1)),
    dual_step=ir.Num(value=0.1), penalty=ir.Num(value=1.0), seed=ir.Num(value=0), snap=ir.Num(value=0),
    decide=ir.Num(value=1.0),
)


def overlay(base: N | None, top: N | None) -> N | None:
    """`top`'s set entries over `base`'s (a block-level override)."""
    if base is None or top is None:
        return top if base is None else base
    updates = {name: value for name in ir.fields_of(type(top)) if (value := getattr(top, name)) is not None}
    return base.model_copy(update={**updates, "span": top.span or base.span})


def constraint_key(constraint: ir.Constraint) -> tuple[str, str, str]:
    return constraint.quantity, format_selector(constraint.site) if constraint.site else "", constraint.op


def merge(parent: ir.Space, child: ir.Space) -> ir.Space:
    """The child space as an override of its (already merged) parent."""
    sites = {site_identity(s): s for s in parent.sites}
    for site in child.sites:
        key = site_identity(site)
        sites[key] = overlay(sites.get(key), site)
    constraints = {constraint_key(c): c for c in parent.constraints}
    constraints.update((constraint_key(c), c) for c in child.constraints)
    return child.model_copy(update={
        "parent": None,
        "tokens": overlay(parent.tokens, child.tokens),
        "defaults": overlay(parent.defaults, child.defaults),
        "sites": list(sites.values()),
        "constraints": list(constraints.values()),
        "objective": overlay(parent.objective, child.objective),
        "policy": overlay(parent.policy, child.policy),
    })


def _where(node: ir.Node) -> str:
    """`file:line` of a node, for messages that point at a second place."""
    return f"{node.span.file}:{node.span.line}" if node.span else "another file"


class Resolver:
    """Resolves every space of a loaded program; diagnostics go to `program.diagnostics`."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.diagnostics = program.diagnostics
        self.scopes: dict[str, dict[str, ir.Num]] = {}
        self.origins: dict[str, dict[str, ir.Const]] = {}  # module -> the definitions of its visible constants
        self.declared: dict[str, tuple[ir.Space, str]] = {}  # space name -> (decl, module)
        self.merged: dict[str, ir.Space | None] = {}
        self.active: list[str] = []
        for name, module in program.modules.items():
            self._declare(name, module)

    def _visible(self, module: str) -> set[str]:
        seen, todo = set(), [module]
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self.program.imports.get(current, []))
        return seen

    def _declare(self, name: str, module: ir.Module) -> None:
        scope: dict[str, ir.Num] = {}
        origins: dict[str, ir.Const] = {}  # constant name -> its definition (one per name in scope)
        for imported in self.program.imports.get(name, []):
            for const_name, const in self.origins.get(imported, {}).items():
                first = origins.setdefault(const_name, const)
                if first is not const:  # two different files define it; one file reached twice is fine
                    report(self.diagnostics, const, f"constant `{const_name}` is also defined at {_where(first)}, and "
                           f"{module.file} imports both", "rename one of them")
            scope.update(self.scopes.get(imported, {}))
        pending = {c.name: c for c in module.consts}
        for const in module.consts:
            pending.pop(const.name, None)
            if const.name in origins:
                report(self.diagnostics, const, f"constant `{const.name}` is already defined at {_where(origins[const.name])}",
                       "rename one of them")
            scope[const.name] = Folder(scope, self.diagnostics, pending).expr(const.value)
            origins[const.name] = const
        self.scopes[name], self.origins[name] = scope, origins
        for space in module.spaces:
            if space.name in self.declared:
                first, where = self.declared[space.name]
                line = first.span.line if first.span else "?"
                report(self.diagnostics, space, f"space `{space.name}` is already defined at {where}:{line}", "rename one of them")
                continue
            self.declared[space.name] = (space, name)

    def merged_space(self, name: str) -> ir.Space | None:
        """The folded, merged (not yet completed) space `name`; None after reporting."""
        if name in self.merged:
            return self.merged[name]
        decl, module = self.declared[name]
        self.active.append(name)
        space = Folder(self.scopes[module], self.diagnostics).node(decl)
        if decl.parent is not None:
            space = self._with_parent(space, decl, module)
        self.active.pop()
        self.merged[name] = space
        return space

    def _with_parent(self, space: ir.Space, decl: ir.Space, module: str) -> ir.Space | None:
        parent = decl.parent
        visible = {n for n, (_, m) in self.declared.items() if m in self._visible(module)}
        if parent not in visible:
            report(self.diagnostics, decl, f"space `{decl.name}` extends unknown space `{parent}`", suggest(parent, visible))
            return None
        if parent in self.active:
            cycle = " -> ".join([*self.active[self.active.index(parent):], parent])
            report(self.diagnostics, decl, f"cyclic `extends`: {cycle}", "a space cannot extend itself, even indirectly")
            return None
        base = self.merged_space(parent)
        return merge(base, space) if base is not None else None


def complete(space: ir.Space, diagnostics: list[Diagnostic]) -> ir.Space:
    """Apply `defaults` to sites and fill every block with the documented defaults."""
    defaults = space.defaults or ir.Defaults()
    sites = []
    for site in space.sites:
        updates: dict[str, Any] = {}
        for field in ir.SITE_FIELDS:
            value = getattr(site, field) or getattr(defaults, field)
            if value is None and field == "activate":
                value = ir.ActivateFixed(on=True)
            if value is None and field != "at":  # no `at`: the block's output (`SiteSettings.position`)
                report(diagnostics, site, f"site `{format_site_key(site.selectors)}` has no `{field}`",
                       f"set `{field}:` in the site or in a `defaults` block")
            updates[field] = value
        sites.append(site.model_copy(update=updates))
    return space.model_copy(update={
        "parent": None, "defaults": None, "sites": sites,
        "tokens": overlay(DEFAULT_TOKENS.model_copy(deep=True), space.tokens),
        "objective": overlay(DEFAULT_OBJECTIVE.model_copy(deep=True), space.objective),
        "policy": overlay(DEFAULT_POLICY.model_copy(deep=True), space.policy),
    })
