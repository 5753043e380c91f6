"""Token flow: where a site's tokens travel after it, through glue and later stacks (analysis only).

A site at a stream node `[B, N, D]` (token axis 1) removes tokens of its reducible span. On the
ORIGINAL graph (`meta['val']`: the lengths before the site), `token_flow` walks the nodes after
the site in graph order and follows its CARRIERS: tensors holding the site's tokens on a token
axis `a >= 1`, batch on axis 0, with the old length `L` on `a`. A node that reads a carrier is:
- a node of a stack block: the block is ENTERED through its stream `entry` (a carrier on axis 1;
  the block reads the tokens no other way) and its `exit` carries the same tokens. Inside it only
  the block map's length reads and side tensors depend on the length (discretise re-binds them);
- `cat` along the token axis: a carrier; the other pieces are protected tokens, one piece at most
  holds the span;
- a slice along the token axis (`x[:, i:j]`, `aten.slice`, step 1): the span must lie wholly inside
  or outside it; a slice holding the span is a carrier, one outside it ends the flow; bounds after
  the span are re-bound relative to the end (`TokenFlow.bounds`);
- a select along it (`x[:, i]`, `aten.select`): `i` must lie outside the span (re-bound relative to
  the end when after it); ends the flow;
- any other op: a carrier when its output keeps the batch axis and has `L` on the token axis
  (elementwise ops, linear layers, norms, reshapes that keep the axis). Every other tensor input
  that BROADCASTS onto that output with `L` on its aligned axis is a sequence-aligned SIDE tensor
  (learned positions `pos[:N]`, masks): discretise gathers it with the carrier's token index, so
  each surviving token keeps the side value of its original position. An output of lower rank
  without `L` ends the flow (a reduction or pooling over the tokens consumes any number of them),
  so does a non-tensor output (a shape or length, read from the reduced tensor at run time) and a
  new tensor made from a carrier's dtype and device (`x.new_ones(...)`).
A site inside its block (`at: mid`) follows the rest of that block by the glue rules (the MLP
keeps the token axis); another site's light attention pass (`positions.light_attention`) counts
as a node of the block it scores for; what reads the site's stream as it was before the site
(`TokenFlow.before`: its own light pass, the lengths a first block's mask is built from) is
neither followed nor downstream, so the block's side tensors built from those lengths are gathered.
A tensor computed after the site FROM it (e.g. a causal mask built from the length read off the
reduced tokens) already has the reduced length: it is no side tensor, in glue or for a block
(`TokenFlow.downstream`).
Anything else that reads a carrier (the token axis transposed, flattened or re-laid out into a
grid, split, resized by an unknown op; a block read other than through its stream; two differently
indexed carriers combined) cannot be re-bound: `DeosCompileError` names the node.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from deos_dsl.errors import DeosCompileError

from .blocks import Block, BlockMap, is_tensor
from .positions import META_LIGHT, light_passes

Span = tuple[int, int]
CATS = (torch.cat, torch.concat, torch.concatenate, torch.ops.aten.cat.default)
SLICE, SELECT = torch.ops.aten.slice.Tensor, torch.ops.aten.select.int
FACTORIES = ("new_ones", "new_zeros", "new_full", "new_empty", "new_tensor")  # read only dtype / device
TO_END = 2**62  # a slice stop at or past this runs to the end (export writes INT64_MAX)
HINT = ("compute it from the reduced tokens (read sizes from the tensor, keep the token axis in place), "
        "or put the site after this point")


@dataclass(frozen=True)
class Same:
    """The token index of `parent` (None: the site's own kept indices)."""

    parent: fx.Node | None


@dataclass(frozen=True)
class Sliced:
    """`parent`'s token index restricted to `[start, stop)`: `start` lies before the span, `stop` is
    re-bound (None or counted from the end)."""

    parent: fx.Node
    start: int
    stop: int | None


@dataclass(frozen=True)
class Joined:
    """A cat along the token axis: piece `carried` holds the site's tokens, the others are protected."""

    carried: fx.Node
    position: int


Derivation = Same | Sliced | Joined


@dataclass(frozen=True)
class Carrier:
    """A node holding the site's tokens on `axis`; `span`: the site's reducible tokens in its
    ORIGINAL coordinates; `derivation`: how its token index follows from its inputs'."""

    axis: int
    span: Span
    derivation: Derivation


@dataclass(frozen=True)
class SideUse:
    """`consumer` reads `side`, aligned with `carrier`'s tokens on `axis` once `side` is broadcast
    to `ndim` dims."""

    consumer: fx.Node
    side: fx.Node
    axis: int
    ndim: int
    carrier: fx.Node


@dataclass
class TokenFlow:
    """The carriers downstream of `start` (module docstring), the glue side tensors to gather, the
    re-bound arguments of slices / selects, the stack blocks entered (graph order), and every node
    computed from `start` (`downstream`)."""

    start: fx.Node
    carriers: dict[fx.Node, Carrier]
    downstream: set[fx.Node] = field(default_factory=set)
    sides: list[SideUse] = field(default_factory=list)
    before: set[fx.Node] = field(default_factory=set)
    bounds: dict[fx.Node, tuple[Any, ...]] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)

    def landed(self, block_map: BlockMap) -> dict[str, Span]:
        """`stack -> the site's span at its blocks' output stream` for every stack (and the
        projector) the tokens reach, the site's own block included."""
        found: dict[str, Span] = {}
        for block in block_map.blocks():
            if block.exit in self.carriers:
                found.setdefault(block.stack, self.carriers[block.exit].span)
        return found


def _same(a: Any, b: Any) -> bool:
    return bool(statically_known_true(a == b))


def _cannot(node: fx.Node, what: str) -> DeosCompileError:
    return DeosCompileError(f"node `{node.name}` ({node.format_node()}) {what}: it cannot be re-bound to the "
                            "reduced sequence", HINT)


def _root(flow: TokenFlow, node: fx.Node) -> fx.Node | None:
    """The node whose token index `node` shares (None: the site's kept indices)."""
    derivation = flow.carriers[node].derivation
    while isinstance(derivation, Same):
        if derivation.parent is None:
            return None
        node, derivation = derivation.parent, flow.carriers[derivation.parent].derivation
    return node


def _bound(value: Any, length: Any, default: Any) -> Any:
    """A slice bound in `[0, length]` (None -> `default`, negatives counted from the end)."""
    if value is None or (isinstance(value, int) and value >= TO_END):
        return default
    if isinstance(value, int) and value < 0:
        return length + value
    return value


def _after(value: Any, length: Any) -> int | None:
    """A position at or after the span, re-bound relative to the end (None: the end itself)."""
    if isinstance(value, int) and value >= TO_END or _same(value, length):
        return None
    if not isinstance(value, int) or not isinstance(length, int):
        raise DeosCompileError(f"cannot re-bind position {value} of a symbolic length {length} relative to the end", HINT)
    return value - length


def _index_items(index: Any, ndim: int) -> dict[int, tuple[int | None, Any, int | None]]:
    """`input axis -> (output axis or None when removed, the item, its position in index)` of a
    basic-indexing `x[index]` on an `ndim`-dim tensor."""
    items = index if isinstance(index, tuple) else (index,)
    consuming = sum(item is not None and item is not Ellipsis for item in items)
    axes: dict[int, tuple[int | None, Any, int | None]] = {}
    axis = out = 0
    for position, item in enumerate(items):
        if item is Ellipsis:
            for _ in range(ndim - consuming):
                axes[axis] = (out, slice(None), None)
                axis, out = axis + 1, out + 1
        elif item is None:
            out += 1
        elif isinstance(item, slice):
            axes[axis] = (out, item, position)
            axis, out = axis + 1, out + 1
        else:
            axes[axis] = (None, item, position)
            axis += 1
    for rest in range(axis, ndim):
        axes[rest] = (out + rest - axis, slice(None), None)
    return axes


class _Walk:
    """One walk from a site (module docstring); `flow` holds the result."""

    def __init__(self, block_map: BlockMap, start: fx.Node, span: Span, before: set[fx.Node]) -> None:
        self.flow = TokenFlow(start, {start: Carrier(1, span, Same(None))}, before=before)
        self.stacked = {node: block for stack in block_map.stacks for block in stack.blocks for node in block.nodes}
        paths = {block.path: block for block in block_map.blocks()}
        for nodes in light_passes(start.graph).values():  # another site's light pass reads as its block does
            for node in nodes:
                if node not in before:
                    self.stacked[node] = paths[node.meta[META_LIGHT][1]]
        self.entered = {self.stacked[start].path} if start in self.stacked else set()
        # a site inside its block (`at: mid`): the rest of that block is followed as glue
        self.inside = self.stacked[start] if start in self.stacked and start is not self.stacked[start].exit else None

    def run(self) -> TokenFlow:
        node, downstream = self.flow.start.next, self.flow.downstream
        downstream.add(self.flow.start)
        while node.op != "root":
            if node in self.flow.before:  # reads the stream as it was before the site
                node = node.next
                continue
            if any(arg in downstream for arg in node.all_input_nodes):
                downstream.add(node)
            inputs = [arg for arg in node.all_input_nodes if arg in self.flow.carriers]
            if inputs and node.op != "output" and node.target not in FACTORIES:
                if node in self.stacked and self.stacked[node] is not self.inside:
                    self._block(node, self.stacked[node], inputs)
                else:
                    self._glue(node, inputs)
            node = node.next
        return self.flow

    # ---- rules ----------------------------------------------------------------------------
    def _block(self, node: fx.Node, block: Block, inputs: list[fx.Node]) -> None:
        carriers = self.flow.carriers
        if block.path not in self.entered:
            if block.entry not in carriers or carriers[block.entry].axis != 1:
                raise _cannot(node, f"reads the site's tokens inside block `{block.path}` other than through its stream")
            self.entered.add(block.path)
            self.flow.blocks.append(block)
            carriers[block.exit] = Carrier(1, carriers[block.entry].span, Same(block.entry))
        if any(arg not in (block.entry, block.exit) for arg in inputs):
            raise _cannot(node, f"reads the site's tokens inside block `{block.path}` other than through its stream")

    def _glue(self, node: fx.Node, inputs: list[fx.Node]) -> None:
        if node.target in CATS:
            self._cat(node)
            return
        if len({(self.flow.carriers[arg].axis, _root(self.flow, arg)) for arg in inputs}) > 1:
            raise _cannot(node, "combines the site's tokens from two differently indexed places")
        source = inputs[0]
        axis = self.flow.carriers[source].axis
        length = source.meta["val"].shape[axis]
        if node.target is operator.getitem and is_tensor(source) and node.args[0] is source:
            self._getitem(node, source, axis, length)
        elif node.target in (SLICE, SELECT) and node.args[0] is source and self._dim(node, source) == axis:
            self._aten_index(node, source, axis, length)
        else:
            self._generic(node, source, axis, length)

    def _generic(self, node: fx.Node, source: fx.Node, axis: int, length: Any) -> None:
        out, src = node.meta.get("val"), source.meta["val"]
        if not isinstance(out, torch.Tensor):
            if isinstance(out, (tuple, list)) and any(isinstance(item, torch.Tensor) for item in out):
                raise _cannot(node, "splits the site's tokens into several tensors")
            return  # a shape or length: read from the reduced tensor at run time
        if out.ndim > axis and _same(out.shape[0], src.shape[0]) and _same(out.shape[axis], length):
            self._carry(node, axis, source, Same(_root(self.flow, source)))
            self.flow.sides += [SideUse(node, arg, axis, out.ndim, source) for arg in node.all_input_nodes
                                if arg not in self.flow.carriers and self._is_side(arg, out, axis, length)]
            return
        if out.ndim < src.ndim and not _same(out.numel(), src.numel()) \
                and not any(_same(size, length) for size in out.shape[1:]):
            return  # a reduction over the tokens consumes them
        raise _cannot(node, f"changes the layout of the token axis {axis} ({list(src.shape)} -> {list(out.shape)})")

    def _is_side(self, arg: fx.Node, out: torch.Tensor, axis: int, length: Any) -> bool:
        """`arg`, computed before the site, broadcasts onto `out` with `length` on the axis it
        aligns with `axis`."""
        if not is_tensor(arg) or arg in self.flow.downstream:
            return False
        val = arg.meta["val"]
        shift = out.ndim - val.ndim
        if shift < 0 or axis - shift < 0 or _same(length, 1):
            return False
        broadcasts = all(_same(a, 1) or _same(a, b) for a, b in zip(val.shape, out.shape[shift:]))
        return broadcasts and _same(val.shape[axis - shift], length)

    def _cat(self, node: fx.Node) -> None:
        pieces = list(node.args[0])
        ndim = node.meta["val"].ndim
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        dim = dim + ndim if dim < 0 else dim
        carried = [i for i, piece in enumerate(pieces) if piece in self.flow.carriers]
        first = pieces[carried[0]]
        axis = self.flow.carriers[first].axis
        if dim != axis:  # joined along another axis: the other pieces are side tensors
            length = first.meta["val"].shape[axis]
            self._generic(node, first, axis, length)
            for piece in pieces:
                if piece not in self.flow.downstream and _same(piece.meta["val"].shape[axis], length):
                    self.flow.sides.append(SideUse(node, piece, axis, ndim, first))
            return
        if len(carried) > 1:
            raise _cannot(node, "joins the site's tokens with themselves")
        offset = 0
        for piece in pieces[:carried[0]]:
            offset += piece.meta["val"].shape[dim]
        if not isinstance(offset, int):
            raise _cannot(node, "joins the site's tokens after a piece of symbolic length")
        start, end = self.flow.carriers[first].span
        self._carry(node, axis, first, Joined(first, carried[0]), (offset + start, offset + end))

    def _getitem(self, node: fx.Node, source: fx.Node, axis: int, length: Any) -> None:
        index = node.args[1]
        items = index if isinstance(index, tuple) else (index,)
        if any(isinstance(item, (torch.Tensor, list)) or is_tensor(item) for item in items):
            raise _cannot(node, "indexes the site's tokens with a tensor")
        axes = _index_items(index, source.meta["val"].ndim)
        if axes[0][0] is None or (isinstance(axes[0][1], slice) and axes[0][1] != slice(None)):
            raise _cannot(node, "indexes the batch axis of the site's tokens")
        out_axis, item, position = axes[axis]

        def rebound(new: Any) -> tuple[Any, ...]:
            new_items = list(items)
            new_items[position] = new
            return (source, tuple(new_items) if isinstance(index, tuple) else new_items[0])

        if out_axis is None:
            self._select(node, item, length, rebound)
        elif item == slice(None):
            self._carry(node, out_axis, source, Same(_root(self.flow, source)))
        else:
            self._slice(node, source, out_axis, item.start, item.stop, item.step, length,
                        lambda start, stop: rebound(slice(start, stop, item.step)))

    @staticmethod
    def _dim(node: fx.Node, source: fx.Node) -> int:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return dim + source.meta["val"].ndim if dim < 0 else dim

    def _aten_index(self, node: fx.Node, source: fx.Node, axis: int, length: Any) -> None:
        args = tuple(node.args) + (None,) * (5 - len(node.args))
        if node.target is SELECT:
            self._select(node, node.args[2], length, lambda new: (source, axis, new))
        else:
            self._slice(node, source, axis, args[2], args[3], args[4], length,
                        lambda start, stop: (source, axis, start, stop, args[4] or 1))

    def _select(self, node: fx.Node, item: Any, length: Any, rebound: Any) -> None:
        start, end = self.flow.carriers[node.args[0]].span
        position = _bound(item, length, None)
        if not isinstance(position, int) or start <= position < end:
            raise _cannot(node, f"selects token {item} of the site's reducible span {start}..{end}")
        if position >= end and (not isinstance(item, int) or item >= 0):
            self.flow.bounds[node] = rebound(_after(position, length))

    def _slice(self, node: fx.Node, source: fx.Node, axis: int, start: Any, stop: Any, step: Any, length: Any,
               rebound: Any) -> None:
        span = self.flow.carriers[source].span
        lo, hi = _bound(start, length, 0), _bound(stop, length, length)
        if step not in (None, 1) or not isinstance(lo, int):
            raise _cannot(node, "slices the site's tokens with a step or a symbolic start")
        if _same(hi, length) or (isinstance(hi, int) and hi >= span[1]):
            if lo <= span[0]:
                self.flow.bounds[node] = rebound(lo, _after(hi, length))
                self._carry(node, axis, source, Sliced(source, lo, _after(hi, length)), (span[0] - lo, span[1] - lo))
                return
            if lo >= span[1]:
                self.flow.bounds[node] = rebound(_after(lo, length), _after(hi, length))
                return
        elif isinstance(hi, int) and hi <= span[0]:
            return  # only protected tokens before the span: their positions do not change
        raise _cannot(node, f"slices into the site's reducible span {span[0]}..{span[1]}")

    def _carry(self, node: fx.Node, axis: int, source: fx.Node, derivation: Derivation, span: Span | None = None) -> None:
        self.flow.carriers[node] = Carrier(axis, span or self.flow.carriers[source].span, derivation)


def token_flow(block_map: BlockMap, start: fx.Node, span: Span, before: set[fx.Node] | None = None) -> TokenFlow:
    """Follow the tokens of a site at stream node `start` with reducible `span` (module
    docstring; `before`: the nodes that read `start` as it was before the site, `sites.before_readers`);
    raises `DeosCompileError` at the first consumer that cannot be re-bound."""
    return _Walk(block_map, start, span, before or set()).run()
