"""Token counts through a graph: the symbolic length of every stream, before and after each site.

`TokenPropagation` is a `Propagation` that knows the block map and the bound sites:
- graph inputs and stack entries have `B` on axis 0;
- the first block of the vision and decoder stacks starts from its `Seed` (`N_text + N_vis`,
  `1 + N_vis`, ...) unless tokens already arrive symbolically from an earlier stack (the
  embedded model's decoder gets the projector's `N_vis` through a concatenation); where export
  kept the length a SymInt, the SymInt is solved for the seed everywhere (`natives`);
- inside a block, the length is what its entry stream carries (`lengths[block]`): its side
  tensors (masks, RoPE tables, position ids; their axes past the batch with the stream's dense
  length) and the SymInts it reads are re-expressed in it;
- at each bound site (its stream node: a block's exit, entry or `mid`) the reducible tokens entering it (`entering`: the
  previous site's symbol on the stack, or the part of the length carrying the span) become the
  site's symbol: every reader but the site's own score reads `length - entering + N_site`; a
  `before` site's light attention pass reads its block's side tensors at the length before it.
A site's score nodes and its operator (`SiteTokens.operator`) are its OVERHEAD, paid when it is
active.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy
import torch
from torch import fx

from deos_dsl.compiler.blocks import Block, BlockMap, module_paths
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.positions import META_LIGHT
from deos_dsl.compiler.sites import BoundSite, SiteScores, light_of, scored_site

from .formulas import Conventions, operator_flops
from .propagate import Costs, Propagation
from .shapes import Dims, Shapes, hint
from .symbols import N_PATCH, N_TEXT, N_VIS, B, Seed, gate_of, site_symbol, stack_seeds


@dataclass(frozen=True)
class SiteTokens:
    """One site: its symbol and gate, the stream length entering (`tokens_in`) and leaving it,
    the reducible tokens `entering` it, and its operator's FLOPs."""

    site: BoundSite
    symbol: sympy.Symbol
    gate: sympy.Symbol
    tokens_in: sympy.Expr
    entering: sympy.Expr
    operator: sympy.Expr

    @property
    def tokens_out(self) -> sympy.Expr:
        return self.tokens_in - self.entering + self.symbol


def _raw(size: Any) -> sympy.Expr | None:
    if isinstance(size, torch.SymInt) and size.node.expr.free_symbols:
        return sympy.sympify(size.node.expr)
    return None


class TokenPropagation(Propagation):
    """Shapes and FLOPs of a block-mapped graph with bound sites (module docstring)."""

    def __init__(self, block_map: BlockMap, sites: list[BoundSite], scores: dict[str, SiteScores],
                 modules: dict[str, SiteModule] | None, conventions: Conventions) -> None:
        self.block_map, self.scores, self.modules = block_map, scores, modules or {}
        seeds, values = stack_seeds(block_map)
        first = block_map.blocks()[0].entry.meta["val"]
        self.batch = hint(first.shape[0])
        values[B] = self.batch
        self.seeds: dict[fx.Node, Seed] = {stack.blocks[0].entry: seeds[stack.prefix]
                                          for stack in block_map.stacks if stack.prefix in seeds}
        natives = self._solve_natives(values)
        super().__init__(Shapes(values), conventions, natives)
        self.global_natives = natives
        self.expected: dict[str, sympy.Symbol | None] = {s.prefix: seeds[s.prefix].reducible
                                                         for s in block_map.stacks if s.prefix in seeds}
        self.owner = self._owners()
        self.side = {block.path: {s.node for s in block.side} for block in block_map.blocks()}
        self.reads = {block.path: set(block.length_reads) for block in block_map.blocks()}
        self.lengths: dict[tuple[str, str | None], sympy.Expr] = {}
        self._block_natives: dict[tuple[str, str | None], dict[sympy.Symbol, sympy.Expr]] = {}
        taken: set[str] = set()
        self.sites: list[SiteTokens] = []
        self._pending = {site.name: site_symbol(site.block.role, site.block.index, site.block.path, taken) for site in sites}
        self.by_node: dict[fx.Node, list[BoundSite]] = {}
        for site in sites:
            self.by_node.setdefault(site.node, []).append(site)
        self.chains: dict[fx.Node, list[Dims]] = {}
        self.ours = {B, N_TEXT, N_VIS, N_PATCH} | set(self._pending.values())

    # ---- set-up -------------------------------------------------------------------------------
    def _solve_natives(self, values: dict[sympy.Symbol, int]) -> dict[sympy.Symbol, sympy.Expr]:
        """Each SymInt length export kept, solved for its stack's seed (the rest keep their hint)."""
        natives: dict[sympy.Symbol, sympy.Expr] = {}
        for entry, seed in self.seeds.items():
            raw = _raw(entry.meta["val"].shape[1])
            if raw is not None and len(raw.free_symbols) == 1:
                (symbol,) = raw.free_symbols
                natives.setdefault(symbol, sympy.solve(raw - seed.length, symbol)[0])
        for node in self.block_map.graph_module.graph.find_nodes(op="placeholder"):
            for size in getattr(node.meta.get("val"), "shape", ()):
                raw = _raw(size)
                for symbol in raw.free_symbols if raw is not None else ():
                    if symbol not in natives and isinstance(raw, sympy.Symbol):
                        values[symbol] = hint(size)
        return natives

    def _owners(self) -> dict[fx.Node, Block]:
        """The block of every node: the block map's, else the outermost block on its module stack
        (a light attention pass: the block it copies)."""
        paths = {block.path: block for block in self.block_map.blocks()}
        owner: dict[fx.Node, Block] = {}
        for node in self.block_map.graph_module.graph.nodes:
            light = node.meta.get(META_LIGHT)
            block = paths[light[1]] if light else \
                self.block_map.block_of(node) or next((paths[p] for p in module_paths(node) if p in paths), None)
            if block is not None:
                owner[node] = block
        return owner

    # ---- block context --------------------------------------------------------------------------
    def length(self, block: Block, light: str | None = None) -> sympy.Expr:
        """The symbolic length of `block`'s stream (what its entry carries, after any site; for
        the light attention pass of site `light`, before that site)."""
        key = (block.path, light)
        if key not in self.lengths:
            self.lengths[key] = self._stream(block.entry, light).exprs[1]
        return self.lengths[key]

    def natives_of(self, block: Block | None, light: str | None = None) -> dict[sympy.Symbol, sympy.Expr]:
        """SymInt substitutions inside `block` (its own length, `length`), or the global ones."""
        if block is None:
            return self.global_natives
        key = (block.path, light)
        if key not in self._block_natives:
            raw = _raw(block.entry.meta["val"].shape[1])
            local = dict(self.global_natives)
            if raw is not None and len(raw.free_symbols) == 1:
                (symbol,) = raw.free_symbols
                local[symbol] = sympy.solve(raw - self.length(block, light), symbol)[0]
            self._block_natives[key] = local
        return self._block_natives[key]

    def _stream(self, node: fx.Node, reader: str | None) -> Any:
        """`node`'s value as site `reader`'s score reads it (before that site), else after every site on it."""
        chain = self.chains.get(node)
        if chain is None:
            return self.values[node]
        names = [site.name for site in self.by_node[node]]
        return chain[names.index(reader)] if reader in names else chain[-1]

    def _rebased(self, node: fx.Node, value: Any, block: Block, light: str | None) -> Any:
        """An outside value read in `block` (or its light pass for site `light`): SymInts in the
        block's length, side tensors' token axes too."""
        meta = node.meta.get("val")
        dense = hint(block.entry.meta["val"].shape[1])
        natives = self.natives_of(block, light)
        if isinstance(value, sympy.Expr):
            raw = _raw(meta)
            if raw is not None:
                return raw.xreplace(natives)
            return self.length(block, light) if node in self.reads[block.path] and meta == dense else value
        if not isinstance(value, Dims) or not isinstance(meta, torch.Tensor):
            return value
        side = node in self.side[block.path]
        exprs = []
        for k, (expr, size) in enumerate(zip(value.exprs, meta.shape)):
            raw = _raw(size)
            if raw is not None:
                expr = raw.xreplace(natives)
            elif side and k >= 1 and value.values[k] == dense:
                expr = self.length(block, light)
            exprs.append(expr)
        return Dims(tuple(exprs), value.values)

    # ---- hooks ------------------------------------------------------------------------------------
    def read(self, user: fx.Node, node: fx.Node) -> Any:
        value = self._stream(node, scored_site(user))
        block = self.owner.get(user)
        if block is None or self.owner.get(node) is block or node is block.entry:
            return value
        return self._rebased(node, value, block, light_of(user))

    def compute(self, gm: fx.GraphModule, node: fx.Node) -> tuple[Any, Costs]:
        self.natives = self.natives_of(self.owner.get(node), light_of(node))
        return super().compute(gm, node)

    def settle(self, node: fx.Node, value: Any) -> Any:
        self.natives = self.natives_of(self.owner.get(node), light_of(node))
        value = super().settle(node, value)
        if isinstance(value, Dims) and value.ndim >= 2 and value.values[0] == self.batch and (
                node.op == "placeholder" or node in self.seeds):
            value = Dims((B,) + value.exprs[1:], value.values)
        if node in self.seeds and isinstance(value, Dims):
            if not value.exprs[1].free_symbols & self.ours:
                value = Dims(value.exprs[:1] + (self.seeds[node].length,) + value.exprs[2:], value.values)
            value = self._placeholders(node, value)
        value = self._checked(value)
        if node in self.by_node:
            self._reduce(node, value)
        return value

    def _placeholders(self, entry: fx.Node, value: Dims) -> Dims:
        """A decoder whose visual tokens are placeholders the projector's features are written
        over (HF LLaVA): its visual count is what the projector outputs (fewer after a vision
        site: the emitted model then writes fewer placeholders, `compact_image_tokens`)."""
        projector, seed = self.block_map.projector, self.seeds[entry]
        if projector is None or seed.reducible is None or projector.exit not in self.values or \
                entry is not self.block_map.stack("decoder").blocks[0].entry:
            return value
        features = self._stream(projector.exit, None).exprs[1]
        if seed.reducible not in sympy.Add.make_args(value.exprs[1]) or \
                self.shapes.value(features) != self.shapes.value(seed.reducible):
            return value
        return Dims(value.exprs[:1] + (value.exprs[1].xreplace({seed.reducible: features}),) + value.exprs[2:], value.values)

    def _checked(self, value: Any) -> Any:
        """Every expression at its dense value (a disagreeing one falls back to the number)."""
        if isinstance(value, list):
            return [self._checked(v) for v in value]
        if not isinstance(value, Dims):
            return value
        exprs = tuple(e if self.shapes.value(e) == v else sympy.Integer(v) for e, v in zip(value.exprs, value.values))
        return Dims(exprs, value.values)

    # ---- sites --------------------------------------------------------------------------------------
    def _reduce(self, node: fx.Node, value: Dims) -> None:
        chain = [value]
        for site in self.by_node[node]:
            start, end = self.scores[site.name].span
            stack = site.block.stack
            length = chain[-1].exprs[1]
            entering = self.shapes.part(length, end - start, self.expected.get(stack)) or sympy.Integer(end - start)
            symbol = self._pending[site.name]
            self.shapes.values[symbol] = self.shapes.value(entering)
            self.expected[stack] = symbol
            module = self.modules.get(site.name)
            node_features = self.scores[site.name].features
            features = self.values[node_features] if node_features in self.values else value
            operator = operator_flops(value.exprs[0], entering, symbol, int(bool(module is not None and module.fuse)),
                                      features.exprs[-1], value.exprs[-1], module is None or module.transfers)
            self.sites.append(SiteTokens(site, symbol, gate_of(symbol), length, entering, operator))
            reduced = length - entering + symbol
            chain.append(Dims(value.exprs[:1] + (reduced,) + value.exprs[2:], value.values))
        self.chains[node] = chain
