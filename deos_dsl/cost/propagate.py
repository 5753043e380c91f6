"""Walk a graph in order: the symbolic shape (`Shapes`) and the FLOPs (`formulas`) of every node.

`Propagation.run(gm)` fills `values[node]` (a `Dims` per tensor, lists for tuples, an
expression per SymInt) and `costs[node]` (`kind -> FLOPs`, empty for a free node):
- graph inputs take their `meta['val']` shape (SymInt dims as expressions, `natives`
  substituted);
- an op with a `Call` (`targets.to_call`) is inferred and costed from the registry;
- a higher-order op (`wrap_with_set_grad_enabled`, `wrap_with_autocast`, ...) is walked inside
  its subgraph, which its FLOPs are the sum of;
- deos's own site modules: a hard site (`HardSite`) costs its operator (`operator_flops`), a
  relaxed site (`SiteModule`) is transparent (a search graph costs what it emits);
- anything else is lowered to ATen ops (`targets.lower`) and walked like a subgraph; a node
  that cannot be lowered costs nothing and is listed in `uncounted`.
A dimension the rules leave as a number while `meta['val']` holds a SymInt takes the SymInt's
expression (`natives` substituted). Subclasses refine what a node reads (`read`) and what a
node's value becomes (`settle`); `graph_costs(gm)` is the plain walk of any graph (no block map,
no sites), e.g. an emitted one.
"""

from __future__ import annotations

import operator
from typing import Any

import sympy
import torch
from torch import fx
from torch.utils import _pytree as pytree

from deos_dsl.compiler.hard_site import HardSite
from deos_dsl.compiler.site_module import SiteModule

from .formulas import MATMUL, Conventions, flops, operator_flops
from .shapes import Dims, Shapes, hint, is_shape, values_of
from .targets import lower, to_call

Costs = dict[str, sympy.Expr]


def add_costs(total: Costs, more: Costs) -> None:
    for kind, expr in more.items():
        total[kind] = total.get(kind, sympy.Integer(0)) + expr


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


class Propagation:
    """Shapes and FLOPs of every node of one graph (module docstring)."""

    def __init__(self, shapes: Shapes, conventions: Conventions, natives: dict[sympy.Symbol, sympy.Expr] | None = None) -> None:
        self.shapes, self.conventions = shapes, conventions
        self.natives: dict[sympy.Symbol, sympy.Expr] = dict(natives or {})
        self.values: dict[fx.Node, Any] = {}
        self.costs: dict[fx.Node, Costs] = {}
        self.uncounted: list[str] = []

    # ---- hooks ------------------------------------------------------------------------------
    def read(self, user: fx.Node, node: fx.Node) -> Any:
        """What `user` reads from `node`."""
        return self.values[node]

    def settle(self, node: fx.Node, value: Any) -> Any:
        """`node`'s value: where the rules give a number and `meta['val']` a SymInt, its expression."""
        return self.from_meta(node.meta.get("val"), value)

    def native(self, size: Any) -> sympy.Expr | None:
        """A SymInt's expression with `natives` substituted (None for a plain int)."""
        if isinstance(size, torch.SymInt) and size.node.expr.free_symbols:
            return sympy.sympify(size.node.expr).xreplace(self.natives)
        return None

    def from_meta(self, meta: Any, value: Any = None) -> Any:
        if isinstance(meta, torch.Tensor):
            known = value if isinstance(value, Dims) and value.ndim == meta.ndim else Dims.constant(values_of(meta))
            exprs = tuple(expr if not expr.is_Number else (self.native(size) or expr)
                          for expr, size in zip(known.exprs, meta.shape))
            return Dims(exprs, known.values)
        if isinstance(meta, (list, tuple)) and isinstance(value, list) and len(value) == len(meta):
            return [self.from_meta(m, v) for m, v in zip(meta, value)]
        if isinstance(meta, torch.SymInt) and not isinstance(value, sympy.Expr):
            return self.native(meta) or value
        return value

    # ---- the walk -----------------------------------------------------------------------------
    def run(self, gm: fx.GraphModule, inputs: list[Any] | None = None) -> Any:
        """Walk `gm`; `inputs` replace its placeholders' values. Returns the output's value."""
        given = iter(inputs) if inputs is not None else None
        result = None
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                value = next(given) if given is not None else self.from_meta(node.meta.get("val"))
            elif node.op == "get_attr":
                attr = _fetch(gm, str(node.target))
                value = Dims.constant(attr.shape) if isinstance(attr, torch.Tensor) else attr
            elif node.op == "output":
                result = fx.node.map_aggregate(node.args[0], lambda a: self.read(node, a) if isinstance(a, fx.Node) else a)
                continue
            else:
                value, costs = self.compute(gm, node)
                self.costs[node] = costs
            self.values[node] = self.settle(node, value)
        return result

    def _abstract(self, node: fx.Node) -> tuple[tuple[Any, ...], dict[str, Any]]:
        read = lambda a: self.read(node, a) if isinstance(a, fx.Node) else a  # noqa: E731
        return fx.node.map_aggregate(node.args, read), fx.node.map_aggregate(node.kwargs, read)

    def compute(self, gm: fx.GraphModule, node: fx.Node) -> tuple[Any, Costs]:
        """`(value, costs)` of one call node."""
        args, kwargs = self._abstract(node)
        out = values_of(node.meta.get("val"))
        if node.op == "call_function" and node.target is operator.getitem and isinstance(args[0], (list, tuple)):
            return args[0][args[1]], {}
        if node.op == "call_function" and isinstance(node.target, torch._ops.HigherOrderOperator):
            return self._higher_order(gm, node, args)
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if isinstance(module, SiteModule):  # transparent: [x, mask, sizes, bias], all [B, N(, D)]
                x = args[0]
                return [x] + [Dims(x.exprs[:2], shape) for shape in out[1:]], {}
            if isinstance(module, HardSite):
                return self._hard_site(module, args, out)
        call = to_call(gm, node, args, kwargs)
        if call is None and not is_shape(out) and not isinstance(out, list):
            return self.from_meta(node.meta.get("val")), {}  # arithmetic on sizes and flags: free
        if call is None:
            return self._lowered(gm, node, args, kwargs)
        value = self.shapes.infer(call, out)
        counted = flops(call, value, self.conventions)
        return value, ({counted[0]: counted[1]} if counted else {})

    def _hard_site(self, module: HardSite, args: tuple[Any, ...], out: Any) -> tuple[Any, Costs]:
        x: Dims = args[0]
        features = args[2] if len(args) > 2 and isinstance(args[2], Dims) else x
        plan = module.plan
        value = [self.shapes.positional([x], shape) for shape in out]
        expr = operator_flops(x.exprs[0], sympy.Integer(plan.entering), sympy.Integer(plan.leaving), int(plan.fuse),
                              features.exprs[-1], x.exprs[-1], plan.transfers)
        return value, {MATMUL: expr}

    def _subgraph(self, graph: fx.GraphModule, inputs: list[Any]) -> tuple[Any, Costs]:
        inner = Propagation(self.shapes, self.conventions, self.natives)
        result = inner.run(graph, inputs)
        total: Costs = {}
        for costs in inner.costs.values():
            add_costs(total, costs)
        self.uncounted += inner.uncounted
        return (list(result) if isinstance(result, (list, tuple)) else result), total

    def _higher_order(self, gm: fx.GraphModule, node: fx.Node, args: tuple[Any, ...]) -> tuple[Any, Costs]:
        at = next((i for i, a in enumerate(args) if isinstance(a, fx.GraphModule)), None)
        if at is None:
            self.uncounted.append(f"{node.name} ({node.target}: no subgraph)")
            return self.from_meta(node.meta.get("val")), {}
        return self._subgraph(args[at], list(args[at + 1:]))

    def _lowered(self, gm: fx.GraphModule, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Costs]:
        metas = fx.node.map_aggregate(node.args, lambda a: a.meta.get("val") if isinstance(a, fx.Node) else a)
        kwmetas = fx.node.map_aggregate(node.kwargs, lambda a: a.meta.get("val") if isinstance(a, fx.Node) else a)
        if node.op == "call_module":
            function = gm.get_submodule(str(node.target))
        elif node.op == "call_method":
            function = getattr(type(metas[0]), str(node.target))
        else:
            function = node.target
        try:
            graph, positions = lower(function, tuple(metas), dict(kwmetas))
        except Exception as error:  # noqa: BLE001  (a function that cannot be traced is reported, not fatal)
            self.uncounted.append(f"{node.name} ({type(error).__name__}: {str(error).splitlines()[0][:120]})")
            return self.from_meta(node.meta.get("val")), {}
        flat = pytree.tree_leaves((args, kwargs), is_leaf=lambda a: isinstance(a, Dims))
        return self._subgraph(graph, [flat[i] for i in positions])


def graph_costs(gm: fx.GraphModule, conventions: Conventions = Conventions()) -> dict[fx.Node, Costs]:
    """`node -> kind -> FLOPs` of any graph with `meta['val']` (no block map, no sites): SymInt
    lengths stay export's symbols, evaluated at their hints (`Cost.evaluate` needs none)."""
    values: dict[sympy.Symbol, int] = {}
    for node in gm.graph.find_nodes(op="placeholder"):
        for size in getattr(node.meta.get("val"), "shape", ()):
            if isinstance(size, torch.SymInt) and isinstance(size.node.expr, sympy.Symbol):
                values[size.node.expr] = hint(size)
    walk = Propagation(Shapes(values), conventions)
    walk.run(gm)
    return {node: {kind: expr.xreplace(values) for kind, expr in costs.items()} for node, costs in walk.costs.items()}
