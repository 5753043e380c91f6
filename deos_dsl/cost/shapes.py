"""Symbolic shapes: every tensor dimension of a graph as a sympy expression over the cost symbols.

A `Dims` pairs the expressions of a tensor's dimensions with their DENSE values (the traced
`meta['val']` shape). `Shapes.infer(call, out)` gives the expressions of an op's output from
those of its inputs and the output's dense values `out` (a shape, or a list of shapes for a
tuple output). Rules, by ATen op name:
- reshapes (view, reshape, flatten, squeeze, ...) group input and output dims by equal dense
  products: a merge multiplies the expressions, a split hands each output dim the factors of
  the expression whose dense values match (`split`), batch first; a size given as an
  expression (a SymInt argument) is taken as is;
- a slice keeps the length's expression when whole, `length - start` to the end, and else the
  terms of the length that its dense size spans (`part`: `[1:17]` of `1 + N_vis` is `N_vis`);
- permutations, expand / repeat, cat / stack, select / narrow / index_select / gather,
  split / chunk / unbind, reductions over `dim`, topk, embedding, the matmul family, convolution
  and attention follow their ATen semantics;
- creation ops take the expressions of their size arguments;
- every other op is pointwise when its output is the broadcast of its tensor inputs (an
  expression beats a number of the same value), else each output dim takes the expression of
  the same dim of a same-rank input with the same value, else its number.
Invariant: every expression evaluates to its dense value at the dense symbol values (an
expression never disagrees with the traced graph; where no rule can tell, it is the number).
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import sympy
import torch
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from deos_dsl.compiler.blocks import example_size as hint  # the dense value of a size, no guard added

Expr = sympy.Expr
ZERO, ONE = sympy.Integer(0), sympy.Integer(1)
TO_END = 2**62  # a slice stop at or past this (export writes INT64_MAX) runs to the end


def values_of(meta: Any) -> Any:
    """The dense values of a node's `meta['val']`: a shape tuple per tensor (lists for tuples),
    an int per SymInt, None otherwise."""
    if isinstance(meta, torch.Tensor):
        return tuple(hint(size) for size in meta.shape)
    if isinstance(meta, (list, tuple)):
        return [values_of(item) for item in meta]
    if isinstance(meta, (torch.SymInt, int)) and not isinstance(meta, bool):
        try:
            return hint(meta)
        except GuardOnDataDependentSymNode:
            return None  # a data-dependent scalar (an `.item()`): no size
    return None


def is_shape(value: Any) -> bool:
    """True for a tensor's dense shape (a tuple of ints, as `values_of` gives)."""
    return isinstance(value, tuple) and all(isinstance(v, int) for v in value)


@dataclass(frozen=True)
class Dims:
    """A tensor's dimensions: `exprs[i]` evaluates to `values[i]` at the dense symbol values."""

    exprs: tuple[Expr, ...]
    values: tuple[int, ...]

    @classmethod
    def constant(cls, values: Sequence[int]) -> Dims:
        return cls(tuple(sympy.Integer(v) for v in values), tuple(int(v) for v in values))

    @property
    def ndim(self) -> int:
        return len(self.values)

    def numel(self) -> Expr:
        return sympy.Mul(*self.exprs)

    def at(self, dim: int) -> Expr:
        return self.exprs[dim % self.ndim]


@dataclass(frozen=True)
class Call:
    """An op to infer or cost: its ATen `name` and its arguments, tensors as `Dims`, SymInts
    as expressions, everything else as written."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        if index < len(self.args):
            return self.args[index]
        return self.kwargs.get(name, default)

    def tensors(self) -> list[Dims]:
        """Every `Dims` among the arguments, lists included, in order."""
        found: list[Dims] = []
        for item in (*self.args, *self.kwargs.values()):
            found += [x for x in (item if isinstance(item, (list, tuple)) else [item]) if isinstance(x, Dims)]
        return found


def as_expr(value: Any) -> Expr | None:
    """An int or expression argument as an expression (None for anything else)."""
    if isinstance(value, sympy.Expr):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return sympy.Integer(value)
    return None


def _dims_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class Shapes:
    """Output expressions of ops (module docstring), given the dense values of the symbols."""

    def __init__(self, values: Mapping[sympy.Symbol, int]) -> None:
        self.values = dict(values)
        self._memo: dict[Expr, int] = {}
        self.rules: dict[str, Callable[[Call, Any], Any]] = {}
        for names, rule in RULES:
            self.rules.update(dict.fromkeys(names, getattr(self, rule)))

    # ---- values and merging ----------------------------------------------------------------
    def value(self, expr: Expr) -> int:
        """The dense value of `expr`."""
        if expr.is_Integer:
            return int(expr)
        if expr not in self._memo:
            self._memo[expr] = int(expr.xreplace(self.values))
        return self._memo[expr]

    def part(self, expr: Expr, value: int, prefer: Expr | None = None) -> Expr | None:
        """The sum of terms of `expr` (at most three, `prefer` first) whose dense value is
        `value`: the part of a token count a span of that many tokens holds; None if none."""
        terms = sympy.Add.make_args(expr)
        if prefer is not None and prefer in terms and self.value(prefer) == value:
            return prefer
        symbolic = [term for term in terms if not term.is_Number]
        for size in range(1, min(3, len(symbolic)) + 1):
            for combo in itertools.combinations(symbolic, size):
                if self.value(sympy.Add(*combo)) == value:
                    return sympy.Add(*combo)
        return None

    @staticmethod
    def pick(candidates: Iterable[Expr], value: int) -> Expr:
        """The first candidate that is not a number, else the number `value`."""
        return next((e for e in candidates if not e.is_Number), sympy.Integer(value))

    def broadcast(self, inputs: list[Dims], out: tuple[int, ...]) -> tuple[Expr, ...] | None:
        """Right-aligned broadcast of `inputs` onto `out` (None if `out` is not their broadcast)."""
        exprs = []
        for i in range(1, len(out) + 1):
            aligned = [(d.exprs[-i], d.values[-i]) for d in inputs if d.ndim >= i]
            sizes = {v for _, v in aligned} - {1}
            if sizes - {out[-i]} or (not sizes and out[-i] != 1):
                return None
            exprs.append(self.pick((e for e, v in aligned if v == out[-i]), out[-i]))
        return tuple(reversed(exprs))

    def positional(self, inputs: list[Dims], out: tuple[int, ...]) -> Dims:
        """Each output dim from the same dim of a same-rank input of the same value, else a number."""
        same = [d for d in inputs if d.ndim == len(out)]
        return Dims(tuple(self.pick((d.exprs[i] for d in same if d.values[i] == v), v) for i, v in enumerate(out)), out)

    def infer(self, call: Call, out: Any) -> Any:
        """The output of `call` (a `Dims`, a list of them, an expression or a value) given `out`."""
        rule = self.rules.get(call.name)
        if rule is not None:
            return rule(call, out)
        return self.default(call, out)

    def default(self, call: Call, out: Any) -> Any:
        inputs = call.tensors()
        if is_shape(out):
            exprs = self.broadcast(inputs, out) if inputs else None
            return Dims(exprs, out) if exprs is not None else self.positional(inputs, out)
        if isinstance(out, list):
            return [self.default(call, item) for item in out]
        return out

    # ---- reshapes -------------------------------------------------------------------------
    def split(self, expr: Expr, targets: list[int]) -> list[Expr] | None:
        """`expr` as a product of one expression per target value (None if it cannot be)."""
        coeff, factors = sympy.factor_terms(expr).as_coeff_mul()
        if not coeff.is_Integer:
            return None
        coeff = int(coeff)
        pool = [(f, self.value(f)) for f in factors]
        out: list[Expr] = []
        for i, target in enumerate(targets):
            exact = next((k for k, (_, v) in enumerate(pool) if v == target and v != 1), None)
            if exact is not None:
                out.append(pool.pop(exact)[0])
                continue
            if coeff % target == 0 and not (i == len(targets) - 1 and pool):
                coeff //= target
                out.append(sympy.Integer(target))
                continue
            picked, rest = ONE, target
            for k in reversed(range(len(pool))):
                if pool[k][1] != 1 and rest % pool[k][1] == 0:
                    rest //= pool[k][1]
                    picked *= pool.pop(k)[0]
            if coeff % rest:
                return None
            coeff //= rest
            out.append(picked * rest)
        if coeff != 1 or any(v != 1 for _, v in pool):
            return None
        if pool:  # factors of value 1 (a batch of 1) go to the first output dim
            out[0] *= sympy.Mul(*(f for f, _ in pool))
        return out

    def regroup(self, src: Dims, out: tuple[int, ...]) -> tuple[Expr, ...]:
        """Output expressions of a reshape of `src` to `out` (module docstring)."""
        result: list[Expr] = []
        i = j = 0
        while j < len(out):
            if i >= src.ndim:
                result += [sympy.Integer(v) for v in out[j:]]
                break
            if out[j] == 1 and src.values[i] != 1:
                result.append(ONE)
                j += 1
                continue
            if src.values[i] == 1 and out[j] != 1:
                i += 1
                continue
            group, targets = [i], [j]
            left, right = src.values[i], out[j]
            while left != right and i + 1 < src.ndim and j + 1 < len(out):
                if left < right:
                    i += 1
                    group.append(i)
                    left *= src.values[i]
                else:
                    j += 1
                    targets.append(j)
                    right *= out[j]
            merged = sympy.Mul(*(src.exprs[k] for k in group))
            values = [out[k] for k in targets]
            parts = [merged] if len(values) == 1 and left == right else self.split(merged, values)
            result += parts if parts is not None else [sympy.Integer(v) for v in values]
            i, j = i + 1, j + 1
        return tuple(result)

    def reshape(self, call: Call, out: Any) -> Any:
        src = call.args[0]
        if not isinstance(src, Dims) or not is_shape(out):
            return self.default(call, out)
        if math.prod(src.values) != math.prod(out):
            return self.positional([src], out)
        exprs = list(self.regroup(src, out))
        sizes = call.arg(1, "shape") if call.name in ("view", "reshape", "_unsafe_view") else None
        if isinstance(sizes, (list, tuple)) and len(sizes) == len(out):
            for k, size in enumerate(sizes):
                if isinstance(size, sympy.Expr) and not size.is_Number:
                    exprs[k] = size
        return Dims(tuple(exprs), out)

    def like(self, call: Call, out: Any) -> Any:
        """Same shape as the first tensor argument (`zeros_like`, casts, copies)."""
        src = call.args[0] if call.args else None
        if isinstance(src, Dims) and is_shape(out) and src.values == out:
            return src
        return self.reshape(call, out) if isinstance(src, Dims) else self.default(call, out)

    # ---- permutations ---------------------------------------------------------------------
    def permute(self, call: Call, out: Any) -> Any:
        src: Dims = call.args[0]
        n = src.ndim
        order = list(range(n))
        if call.name == "permute":
            order = [d % n for d in call.arg(1, "dims")]
        elif call.name in ("transpose", "swapaxes", "swapdims"):
            a, b = call.arg(1, "dim0") % n, call.arg(2, "dim1") % n
            order[a], order[b] = order[b], order[a]
        elif call.name in ("t", "mT", "mH", "adjoint") and n >= 2:
            order[-1], order[-2] = order[-2], order[-1]
        elif call.name == "numpy_T":
            order.reverse()
        elif call.name == "movedim":
            sources = [d % n for d in _dims_list(call.arg(1, "source"))]
            targets = [d % n for d in _dims_list(call.arg(2, "destination"))]
            rest = iter(d for d in range(n) if d not in sources)
            placed = dict(zip(targets, sources))
            order = [placed[k] if k in placed else next(rest) for k in range(n)]
        return Dims(tuple(src.exprs[k] for k in order), out)

    # ---- broadcasting creations -------------------------------------------------------------
    def _size(self, size: Any, value: int) -> Expr:
        expr = as_expr(size)
        return expr if expr is not None and not expr.is_Number and self.value(expr) == value else sympy.Integer(value)

    def expand(self, call: Call, out: Any) -> Any:
        src: Dims = call.args[0]
        if call.name == "expand_as":
            return call.args[1]
        sizes = call.arg(1, "size") or [None] * len(out)
        offset = len(out) - src.ndim
        exprs = []
        for k, v in enumerate(out):
            q = k - offset
            if q >= 0 and src.values[q] == v:
                exprs.append(src.exprs[q])
            else:
                exprs.append(self._size(sizes[k], v))
        return Dims(tuple(exprs), out)

    def repeat(self, call: Call, out: Any) -> Any:
        src: Dims = call.args[0]
        if call.name == "repeat_interleave":
            times, dim = call.arg(1, "repeats"), call.arg(2, "dim")
            if isinstance(times, int) and dim is not None:
                exprs = list(src.exprs)
                exprs[dim % src.ndim] *= times
                return Dims(tuple(exprs), out)
            return self.positional([src], out)
        repeats = list(call.arg(1, "repeats"))
        repeats = [1] * (src.ndim - len(repeats)) + repeats  # `tile` pads short repeats with ones
        padded = (ONE,) * (len(repeats) - src.ndim) + src.exprs
        return Dims(tuple(e * int(r) for e, r in zip(padded, repeats)), out)

    def creation(self, call: Call, out: Any) -> Any:
        if not is_shape(out):
            return self.default(call, out)
        if call.name == "arange":
            numbers = [as_expr(a) for a in call.args if as_expr(a) is not None]
            step = numbers[2] if len(numbers) > 2 else ONE
            start, end = (numbers[0], numbers[1]) if len(numbers) > 1 else (ZERO, numbers[0] if numbers else None)
            if end is not None and step == 1:
                return Dims((self._size(end - start, out[0]),), out)
            return Dims.constant(out)
        sizes = call.arg(1, "size") if call.name.startswith("new_") else call.arg(0, "size")
        if isinstance(sizes, (list, tuple)) and len(sizes) == len(out):
            return Dims(tuple(self._size(s, v) for s, v in zip(sizes, out)), out)
        return Dims.constant(out)

    # ---- joins and parts ------------------------------------------------------------------
    def cat(self, call: Call, out: Any) -> Any:
        parts = [p for p in call.arg(0, "tensors") if isinstance(p, Dims) and p.values != (0,)]
        dim = call.arg(1, "dim", 0) % len(out)
        exprs = []
        for k, v in enumerate(out):
            if k == dim:
                exprs.append(sympy.Add(*(p.exprs[k] for p in parts)))
            else:
                exprs.append(self.pick((p.exprs[k] for p in parts if p.values[k] == v), v))
        return Dims(tuple(exprs), out)

    def stack(self, call: Call, out: Any) -> Any:
        parts = [p for p in call.arg(0, "tensors") if isinstance(p, Dims)]
        dim = call.arg(1, "dim", 0) % len(out)
        rest = [k for k in range(len(out)) if k != dim]
        exprs = [ONE] * len(out)
        exprs[dim] = sympy.Integer(out[dim])
        for i, k in enumerate(rest):
            exprs[k] = self.pick((p.exprs[i] for p in parts), out[k])
        return Dims(tuple(exprs), out)

    def _along(self, src: Dims, dim: int, size: Expr, out: tuple[int, ...]) -> Dims:
        exprs = list(src.exprs)
        exprs[dim] = size
        return Dims(tuple(exprs), out)

    def slice(self, call: Call, out: Any) -> Any:
        src: Dims = call.args[0]
        dim = call.arg(1, "dim", 0) % src.ndim
        start, end, step = call.arg(2, "start"), call.arg(3, "end"), call.arg(4, "step", 1)
        length, v = src.exprs[dim], out[dim]
        start_expr = as_expr(start) if start is not None else ZERO
        end_expr = as_expr(end)
        to_end = end is None or (isinstance(end, int) and end >= TO_END)
        if v == src.values[dim]:
            size = length
        elif step != 1 or start_expr is None:
            size = sympy.Integer(v)
        elif to_end and start_expr.is_nonnegative:
            size = length - start_expr
        elif end_expr is not None and end_expr.is_negative and start_expr == 0:
            size = length + end_expr
        elif end_expr is not None and not end_expr.is_Number:
            size = end_expr - start_expr
        else:  # a span of the tokens: the terms of the length it holds (`part`), else a number
            size = self.part(length, v) or sympy.Integer(v)
        return self._along(src, dim, self._size(size, v) if not size.is_Number else size, out)

    def select(self, call: Call, out: Any) -> Any:
        src: Dims = call.args[0]
        dim = call.arg(1, "dim") % src.ndim
        return Dims(src.exprs[:dim] + src.exprs[dim + 1:], out)

    def narrow(self, call: Call, out: Any) -> Any:
        src: Dims = call.args[0]
        dim = call.arg(1, "dim") % src.ndim
        return self._along(src, dim, self._size(call.arg(3, "length"), out[dim]), out)

    def index_select(self, call: Call, out: Any) -> Any:
        src, index = call.args[0], call.arg(2, "index")
        dim = call.arg(1, "dim") % src.ndim
        size = index.exprs[0] if isinstance(index, Dims) and index.ndim else sympy.Integer(out[dim])
        return self._along(src, dim, size, out)

    def gather(self, call: Call, out: Any) -> Any:
        index = call.arg(2, "index")
        return index if isinstance(index, Dims) and index.values == out else self.default(call, out)

    def parts(self, call: Call, out: Any) -> Any:
        """`split`, `split_with_sizes`, `chunk`, `unbind`, `tensor_split`: a list of parts."""
        src: Dims = call.args[0]
        dim = (call.arg(1, "dim", 0) if call.name == "unbind" else call.arg(2, "dim", 0)) % src.ndim
        pieces = []
        for shape in out:
            if call.name == "unbind":
                pieces.append(Dims(src.exprs[:dim] + src.exprs[dim + 1:], shape))
            else:
                size = src.exprs[dim] if shape[dim] == src.values[dim] else sympy.Integer(shape[dim])
                pieces.append(self._along(src, dim, size, shape))
        return pieces

    def index(self, call: Call, out: Any) -> Any:
        """Tensor indexing as `x[...]` (`operator.getitem` on a tensor, fx graphs)."""
        src: Dims = call.args[0]
        items = call.args[1] if isinstance(call.args[1], tuple) else (call.args[1],)
        if any(isinstance(item, Dims) for item in items) or not is_shape(out):
            return self.positional([src], out) if is_shape(out) else self.default(call, out)
        if Ellipsis in items:
            at = items.index(Ellipsis)
            fill = src.ndim - sum(1 for item in items if item is not None and item is not Ellipsis)
            items = items[:at] + (slice(None),) * fill + items[at + 1:]
        exprs, k = [], 0
        for item in items:
            if item is None:
                exprs.append(ONE)
                continue
            if isinstance(item, slice):
                step = item.step if item.step is not None else 1
                part = self.slice(Call("slice", (src, k, item.start, item.stop, step)), src.values[:k]
                                  + (out[len(exprs)],) + src.values[k + 1:])
                exprs.append(part.exprs[k])
            k += 1
        exprs += src.exprs[k:]
        return Dims(tuple(exprs), out) if len(exprs) == len(out) else self.positional([src], out)

    # ---- reductions, selections ------------------------------------------------------------
    def reduce(self, call: Call, out: Any) -> Any:
        src = call.args[0] if call.args else None
        if not isinstance(src, Dims):
            return self.default(call, out)
        shapes = out if isinstance(out, list) else [out]
        results = []
        for shape in shapes:
            if not is_shape(shape):
                results.append(shape)
            elif len(shape) == src.ndim:
                results.append(self.positional([src], shape))
            else:
                dims = call.arg(1, "dim")
                gone = {d % src.ndim for d in _dims_list(dims)} if dims not in (None, []) else set(range(src.ndim))
                kept = tuple(e for k, e in enumerate(src.exprs) if k not in gone)
                results.append(Dims(kept, shape) if len(kept) == len(shape) else self.positional([src], shape))
        return results if isinstance(out, list) else results[0]

    def topk(self, call: Call, out: Any) -> Any:
        src: Dims = call.args[0]
        dim = call.arg(2, "dim", -1) % src.ndim
        size = self._size(call.arg(1, "k"), out[0][dim])
        return [self._along(src, dim, size, shape) for shape in out]

    def embedding(self, call: Call, out: Any) -> Any:
        weight, indices = call.args[0], call.args[1]
        return Dims(indices.exprs + weight.exprs[-1:], out)

    # ---- compute ops ------------------------------------------------------------------------
    def matmul(self, call: Call, out: Any) -> Any:
        name = call.name
        if name == "linear":
            x, w = call.args[0], call.args[1]
            return Dims(x.exprs[:-1] + w.exprs[:1], out)
        a, b = (call.args[1], call.args[2]) if name in ("addmm", "baddbmm") else (call.args[0], call.args[1])
        if a.ndim == 1 and b.ndim == 1:
            return Dims((), out)
        if b.ndim == 1:
            return Dims(a.exprs[:-1], out)
        if a.ndim == 1:
            return Dims(b.exprs[:-2] + b.exprs[-1:], out)
        batch_a, batch_b = Dims(a.exprs[:-2], a.values[:-2]), Dims(b.exprs[:-2], b.values[:-2])
        batch = self.broadcast([batch_a, batch_b], out[:-2]) or tuple(sympy.Integer(v) for v in out[:-2])
        return Dims(batch + (a.exprs[-2], b.exprs[-1]), out)

    def einsum(self, call: Call, out: Any) -> Any:
        letters = einsum_letters(call)
        if letters is None or not is_shape(out):
            return self.default(call, out)
        sizes, output = letters
        return Dims(tuple(sizes[c] for c in output), out)

    def convolution(self, call: Call, out: Any) -> Any:
        x: Dims = call.args[0]
        spatial = tuple(x.exprs[k] if x.values[k] == out[k] else sympy.Integer(out[k]) for k in range(2, len(out)))
        return Dims((x.exprs[0], sympy.Integer(out[1])) + spatial, out)

    def attention(self, call: Call, out: Any) -> Any:
        q, v = call.args[0], call.args[2]
        first = out[0] if isinstance(out, list) else out
        result = Dims(q.exprs[:-1] + v.exprs[-1:], first)
        if not isinstance(out, list):
            return result
        return [result] + [self.positional([q], shape) if is_shape(shape) else shape for shape in out[1:]]

    # ---- sizes --------------------------------------------------------------------------------
    def sym_size(self, call: Call, out: Any) -> Any:
        src: Dims = call.args[0]
        if call.name == "sym_numel":
            return src.numel()
        dim = call.arg(1, "dim")
        return src.exprs if dim is None else src.at(dim)

    def scalar(self, call: Call, out: Any) -> Any:
        """Python arithmetic on sizes (`operator.mul`, `floordiv`, `sym_max`, ...)."""
        if call.tensors():
            return self.default(call, out)
        values = [as_expr(a) for a in call.args]
        if any(v is None for v in values) or not values:
            return out
        func = SCALAR_OPS[call.name]
        result = sympy.sympify(func(*values))
        return result if isinstance(out, int) and self.value(result) == out else out


def einsum_letters(call: Call) -> tuple[dict[str, Expr], str] | None:
    """`(letter -> expression, output letters)` of a two-or-more-operand einsum without `...`."""
    equation, operands = call.args[0], [o for o in call.args[1] if isinstance(o, Dims)]
    if "." in equation:
        return None
    inputs, _, output = equation.replace(" ", "").partition("->")
    terms = inputs.split(",")
    if not output and "->" not in equation:
        output = "".join(sorted(c for c in set(inputs) - {","} if inputs.count(c) == 1))
    sizes: dict[str, Expr] = {}
    for term, dims in zip(terms, operands):
        for letter, expr in zip(term, dims.exprs):
            if letter not in sizes or sizes[letter].is_Number:
                sizes[letter] = expr
    return sizes, output


SCALAR_OPS: dict[str, Callable[..., Any]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "neg": operator.neg,
    "floordiv": lambda a, b: sympy.floor(a / b), "mod": sympy.Mod, "truediv": operator.truediv,
    "sym_max": sympy.Max, "sym_min": sympy.Min,
}

RESHAPES = ("view", "_unsafe_view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
            "reshape_as", "_reshape_alias", "view_copy", "squeeze_copy", "unsqueeze_copy")
LIKE = ("contiguous", "clone", "alias", "detach", "lift_fresh_copy", "_to_copy", "to", "type_as", "float", "half",
        "double", "bfloat16", "int", "long", "bool", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like",
        "randn_like", "_assert_tensor_metadata", "copy", "masked_fill", "dropout", "native_dropout", "alias_copy")
REDUCTIONS = ("sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "prod", "var", "std", "norm",
              "linalg_vector_norm", "logsumexp", "any", "all", "var_mean", "std_mean", "nansum", "nanmean")
MATMULS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_scaled_mm")
CONVOLUTIONS = ("convolution", "_convolution", "conv1d", "conv2d", "conv3d", "cudnn_convolution",
                "_slow_conv2d_forward", "convolution_overrideable", "conv_transpose1d", "conv_transpose2d",
                "conv_transpose3d")
ATTENTIONS = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
              "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_attention_math",
              "_flash_attention_forward", "_efficient_attention_forward")
RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (RESHAPES, "reshape"),
    (LIKE, "like"),
    (("permute", "transpose", "t", "swapaxes", "swapdims", "movedim", "mT", "mH", "adjoint", "numpy_T"), "permute"),
    (("expand", "expand_as", "broadcast_to"), "expand"),
    (("repeat", "repeat_interleave", "tile"), "repeat"),
    (("arange", "zeros", "ones", "empty", "full", "rand", "randn", "new_zeros", "new_ones", "new_empty", "new_full",
      "empty_strided"), "creation"),
    (("cat", "concat", "concatenate"), "cat"),
    (("stack",), "stack"),
    (("slice",), "slice"),
    (("select",), "select"),
    (("narrow",), "narrow"),
    (("index_select",), "index_select"),
    (("gather",), "gather"),
    (("split", "split_with_sizes", "chunk", "unbind", "tensor_split", "unsafe_split"), "parts"),
    (("getitem_tensor",), "index"),
    (REDUCTIONS, "reduce"),
    (("topk",), "topk"),
    (("embedding",), "embedding"),
    (MATMULS, "matmul"),
    (("einsum",), "einsum"),
    (CONVOLUTIONS, "convolution"),
    (ATTENTIONS, "attention"),
    (("sym_size", "sym_numel"), "sym_size"),
    (tuple(SCALAR_OPS), "scalar"),
)
