"""Re-bind what lies downstream of one hard site to its reduced sequence (used by pass 4, discretise).

Input: the site's `TokenFlow` (`deos_dsl.compiler.token_flow`, found on the original graph) and
the hard site's outputs `x [B, N', D]`, `kept_idx [B, N']` (positions in the site's input stream).
- TOKEN INDEX of a carrier, built only where needed: `kept_idx` at the site, then carried through
  slices (`slice_index`) and concatenations (`join_index`: protected pieces keep their own
  positions, the reduced piece is `removed` tokens shorter), inserted right after the carrier;
  each is the carrier's positions BEFORE this site, so the gathers of successive sites compose;
  the site's sizes and bias can be carried the same way (`along`, protected tokens filled);
- GLUE SIDE TENSORS (`gather_side`, inserted right before their consumer), e.g. learned positions
  `pos[:N]` added after a projector: each surviving token takes its own original row, a merged
  token its destination's;
- slice / select bounds after the span, counted from the end (`TokenFlow.bounds`);
- every BLOCK the tokens enter (later blocks of the site's stack, blocks of later stacks): its
  LENGTH READS re-pointed at `sym_size(its entry stream, 1)` and its SIDE TENSORS gathered
  (`gather_tokens`; `[.., N, N]` masks on both token axes, `gather_mask`) with the index of its
  entry, right before their first use in the block (not those computed from the reduced tokens,
  `TokenFlow.downstream`: they have the reduced length already); the light attention pass of
  another site `before` the block reads them as the block does (`positions.light_attention`),
  the site's own keeps what it read before the site.
`now` maps each original side tensor / length read (glue sides: `(consumer, side)`) to what its
users read now; every inserted node is tagged `meta['deos_rebind']` (a later site on the same
block moves the stream's uses, but not these).
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Hashable

import torch
from torch import fx

from deos_dsl.ops import gather_tokens

from .blocks import Block
from .graph_edit import insert_after, insert_before
from .masking import gather_mask
from .positions import META_LIGHT, light_passes
from .sites import META_SDPA
from .token_flow import Joined, Same, Sliced, TokenFlow
from .token_index import gather_side, join_index, join_values, slice_index

META_REBIND = "deos_rebind"


class Rebind:
    """Re-bind `flow` to the hard site whose output nodes are `outputs` (module docstring)."""

    def __init__(self, flow: TokenFlow, outputs: dict[str, fx.Node], now: dict[Hashable, fx.Node], site: str) -> None:
        self.flow, self.outputs, self.now, self.site = flow, outputs, now, site
        self._light: dict[str, list[fx.Node]] | None = None  # block path -> other sites' light passes
        self._along: dict[tuple[fx.Node, str, float | None], fx.Node] = {}
        self._removed: fx.Node | None = None

    def apply(self) -> None:
        for node, args in self.flow.bounds.items():
            node.args = (node.args[0], *args[1:])  # the source as it is now (the site's output at the site)
        done: set[Hashable] = set()
        for use in self.flow.sides:
            key = (use.consumer, use.side)
            if key not in done:
                done.add(key)
                old = self.now.get(key, use.side)
                new = self.now[key] = self._tag(insert_before(use.consumer, gather_side,
                                                              (old, self.index(use.carrier), use.axis, use.ndim)))
                use.consumer.replace_input_with(old, new)
        made: dict[fx.Node, fx.Node] = {}
        for block in self.flow.blocks:
            self._block(block, made)
        self.now.update(made)

    def index(self, node: fx.Node) -> fx.Node:
        """The token index `[B, N']` of carrier `node` (built on first use)."""
        return self.along(node, "kept_idx")

    def along(self, node: fx.Node, output: str, fill: float | None = None) -> fx.Node:
        """The site's per-token `output` (`kept_idx`; with a `fill`, values such as `sizes`) carried
        to carrier `node`: an index shifts with the slices and joins, values are sliced, and
        the protected tokens joined to them get `fill`."""
        key = (node, output, fill)
        if key not in self._along:
            derivation = self.flow.carriers[node].derivation
            if isinstance(derivation, Same):
                made = self.outputs[output] if derivation.parent is None else self.along(derivation.parent, output, fill)
            elif isinstance(derivation, Sliced):
                made = self._tag(insert_after(node, *self._sliced(self.along(derivation.parent, output, fill), derivation, fill)))
            else:
                made = self._tag(insert_after(node, *self._joined(node, self.along(derivation.carried, output, fill),
                                                                  derivation, fill)))
            self._along[key] = made
        return self._along[key]

    @staticmethod
    def _sliced(parent: fx.Node, derivation: Sliced, fill: float | None) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if fill is None:
            return slice_index, (parent, derivation.start, derivation.stop)
        return operator.getitem, (parent, (slice(None), slice(derivation.start, derivation.stop)))

    def _joined(self, node: fx.Node, parent: fx.Node, derivation: Joined,
                fill: float | None) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        pieces, axis = node.args[0], self.flow.carriers[node].axis
        if fill is None:
            return join_index, (pieces, parent, derivation.position, axis, self._removed_count())
        return join_values, (pieces, parent, derivation.position, axis, fill)

    def _removed_count(self) -> fx.Node:
        """`N - N'` at run time (the tokens the site removed from its input stream)."""
        if self._removed is None:
            before = self._tag(insert_after(self.outputs["bias"], torch.ops.aten.sym_size.int, (self.outputs["call"].args[0], 1)))
            after = self._tag(insert_after(before, torch.ops.aten.sym_size.int, (self.outputs["x"], 1)))
            self._removed = self._tag(insert_after(after, operator.sub, (before, after)))
        return self._removed

    def _block(self, block: Block, made: dict[fx.Node, fx.Node]) -> None:
        entry = self.outputs["x"] if block.entry is self.flow.start else block.entry
        readers = self._readers(block)
        for read in block.length_reads:
            old = self.now.get(read, read)
            if read not in made:
                made[read] = self._tag(insert_before(_first_use(readers, old), torch.ops.aten.sym_size.int, (entry, 1)))
            _replace_in(readers, old, made[read])
        for side in (side for side in block.side if side.node not in self.flow.downstream):
            old = self.now.get(side.node, side.node)
            if side.node not in made:
                gather = gather_mask if side.kind == "mask" else gather_tokens
                made[side.node] = self._tag(insert_before(_first_use(readers, old), gather, (old, self.index(block.entry))))
            _replace_in(readers, old, made[side.node])

    def _readers(self, block: Block) -> list[fx.Node]:
        """The nodes that read `block`'s side tensors and length, in graph order: the light
        attention passes of OTHER sites before it (they precede it; this site's own reads the
        stream as it was before the site), then the block's own nodes."""
        if self._light is None:
            self._light = {}
            for site, nodes in light_passes(block.entry.graph).items():
                for node in nodes if site != self.site else []:
                    self._light.setdefault(node.meta[META_LIGHT][1], []).append(node)
            for nodes in self._light.values():
                nodes.sort()  # two sites' passes before one block: graph order
        return self._light.get(block.path, []) + block.nodes

    @staticmethod
    def _tag(node: fx.Node) -> fx.Node:
        node.meta[META_REBIND] = True
        return node


def _first_use(readers: list[fx.Node], node: fx.Node) -> fx.Node:
    return next((member for member in readers if node in member.all_input_nodes), readers[0])


def _replace_in(readers: list[fx.Node], old: fx.Node, new: fx.Node) -> None:
    members = set(readers)
    for user in list(old.users):  # the readers and the attention scores recomputed from the block's nodes
        if user in members or user.meta.get(META_SDPA) in members:
            user.replace_input_with(old, new)
