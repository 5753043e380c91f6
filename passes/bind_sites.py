"""Pass 1: bind the site selectors of a space to block-boundary nodes of the traced graph.

A site reduces at the OUTPUT of each block its selectors match (docs/language.md); the bound
node is that block's stream `exit` `[B, N, D]`. Role selectors index the block lists of the
block map (`decoder.layers[2]`, `[-1]`, `[2:16:2]`, `[25%]` = layer floor(25/100 * L),
`[100%]` = the last layer, `[*]`, `projector`); module selectors glob over block paths
(`*` one path segment, `**` any number, `?` one character).

Shape (torch.fx `PassBase`): `requires` checks the block map belongs to the graph and that no
earlier binding exists; `call` resolves every selector, raising ONE `DeosError` with a
positioned diagnostic (and a did-you-mean hint from the model's real roles and paths) for each
bad selector, then writes `node.meta['deos_site']` on every bound node; `ensures` checks the
graph is unchanged (same nodes, `lint()` passes) and every bound node carries its annotation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from deos_dsl.compiler.blocks import Block, BlockMap
from deos_dsl.frontend import ir
from deos_dsl.frontend.diagnostics import DeosError, Diagnostic, suggest, with_sources
from deos_dsl.frontend.formatter import format_site_key

META_KEY = "deos_site"


@dataclass(frozen=True)
class BoundSite:
    """One searched site: block `block` of the `site_index`-th `site` of the space, at `node`.

    Two `site`s may select the same block (depth percents on a shallow model): both bind, and
    they reduce one after the other in site order (`meta['deos_site']` is a list).
    """

    site_index: int
    selector: str
    block: Block
    node: fx.Node

    @property
    def name(self) -> str:
        """The site's stable name: `<block path>@<site index>`."""
        return f"{self.block.path}@{self.site_index}"


def layer_index(num: ir.Num, length: int) -> int:
    """A point: an integer (negative from the end) or `p%` = floor(p/100 * L), 100% = last."""
    if num.unit == "%":
        return min(math.floor(num.value / 100 * length), length - 1)
    value = int(num.value)
    return value + length if value < 0 else value


def _slice_bound(num: ir.Expr | None, length: int) -> int | None:
    if num is None:
        return None
    assert isinstance(num, ir.Num)
    return math.floor(num.value / 100 * length) if num.unit == "%" else int(num.value)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` = one dotted segment, `**` = any number of segments, `?` = one character."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    table = {"**": r".*", "*": r"[^.]+", "?": r"[^.]"}
    return re.compile("".join(table.get(part, re.escape(part)) for part in parts) + r"\Z")


class BindSites(PassBase):
    """Bind `space`'s sites to `block_map`'s boundary nodes; the result is in `self.sites`."""

    def __init__(self, space: ir.Space, block_map: BlockMap) -> None:
        self.space, self.block_map = space, block_map
        self.sites: list[BoundSite] = []
        self._node_count = 0

    # ---- pass shape -------------------------------------------------------------------------
    def requires(self, graph_module: fx.GraphModule) -> None:
        nodes = set(graph_module.graph.nodes)
        if graph_module is not self.block_map.graph_module or any(b.exit not in nodes for b in self.block_map.blocks()):
            raise ValueError("bind_sites: the block map was built for another graph")
        if any(META_KEY in node.meta for node in nodes):
            raise ValueError("bind_sites: the graph already has bound sites")
        self._node_count = len(nodes)

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        diagnostics: list[Diagnostic] = []
        sites: dict[tuple[str, int], BoundSite] = {}
        for site_index, site in enumerate(self.space.sites):
            for selector in site.selectors:
                for block in self._select(selector, diagnostics):
                    sites.setdefault((block.path, site_index),
                                     BoundSite(site_index, format_site_key([selector]), block, block.exit))
        if diagnostics:
            raise DeosError(with_sources(diagnostics, _sources(diagnostics)))
        order = {node: i for i, node in enumerate(graph_module.graph.nodes)}
        self.sites = sorted(sites.values(), key=lambda s: (order[s.node], s.site_index))
        for site in self.sites:
            site.node.meta.setdefault(META_KEY, []).append(
                {"name": site.name, "site": site.site_index, "selector": site.selector, "role": site.block.role})
        return PassResult(graph_module, False)  # only node.meta changes; the graph is untouched

    def ensures(self, graph_module: fx.GraphModule) -> None:
        graph_module.graph.lint()
        if len(graph_module.graph.nodes) != self._node_count:
            raise AssertionError("bind_sites changed the graph's nodes")
        if any(site.site_index not in [r["site"] for r in site.node.meta.get(META_KEY, [])] for site in self.sites):
            raise AssertionError("bind_sites: a bound node lost its annotation")

    # ---- selectors --------------------------------------------------------------------------
    @staticmethod
    def _error(diagnostics: list[Diagnostic], node: ir.Node, message: str, hint: str | None = None) -> None:
        span = node.span  # None for spaces built in code: reported at <space>:1:1
        if span is None:
            diagnostics.append(Diagnostic("<space>", 1, 1, message, hint=hint))
        else:
            diagnostics.append(Diagnostic(span.file, span.line, span.col, message, span.end_line, span.end_col, hint=hint))

    def _select(self, selector: ir.Selector, diagnostics: list[Diagnostic]) -> list[Block]:
        if isinstance(selector, ir.ModuleSelector):
            return self._select_module(selector, diagnostics)
        lists = self.block_map.role_lists()
        path = ".".join(selector.path)
        if path not in lists:
            known = ", ".join(f"`{name}`" for name in lists) or "none"
            hint = suggest(path, lists) or f"this model's block lists: {known}"
            self._error(diagnostics, selector, f"the model has no `{path}` (no {selector.role} blocks were found)", hint)
            return []
        blocks = lists[path]
        if selector.index is None or selector.index.every:
            return list(blocks)
        chosen: list[Block] = []
        for item in selector.index.items:
            chosen += self._select_item(item, path, blocks, diagnostics)
        return _unique(chosen)

    def _select_item(self, item: ir.IndexItem, path: str, blocks: list[Block],
                     diagnostics: list[Diagnostic]) -> list[Block]:
        length = len(blocks)
        if isinstance(item, ir.Point):
            assert isinstance(item.at, ir.Num)
            index = layer_index(item.at, length)
            if 0 <= index < length:
                return [blocks[index]]
            self._error(diagnostics, item, f"layer index {item.at.value:g} is out of range for `{path}` "
                        f"({length} layers: 0..{length - 1})", f"use an index in [-{length}, {length - 1}] or a depth percent")
            return []
        step = _slice_bound(item.step, length)
        chosen = blocks[_slice_bound(item.start, length):_slice_bound(item.stop, length):step]
        if not chosen:
            self._error(diagnostics, item, f"the slice selects no layer of `{path}` ({length} layers)")
        return chosen

    def _select_module(self, selector: ir.ModuleSelector, diagnostics: list[Diagnostic]) -> list[Block]:
        blocks = self.block_map.blocks()
        regex = glob_regex(selector.pattern)
        chosen = [block for block in blocks if regex.match(block.path)]
        if chosen:
            return chosen
        stacks = " or ".join(f"`{s.prefix}.*`" for s in self.block_map.stacks)
        modules = [path for path in self.block_map.module_paths if regex.match(path)]
        if modules:
            self._error(diagnostics, selector, f"module path `{selector.pattern}` matches {len(modules)} module(s) "
                        f"(e.g. `{modules[0]}`) but no block: sites sit at block outputs", f"blocks are {stacks}")
        else:
            hint = suggest(selector.pattern, [block.path for block in blocks])
            self._error(diagnostics, selector, f"module path `{selector.pattern}` matches no block of the model",
                        hint or f"blocks are {stacks}")
        return chosen


def _unique(blocks: list[Block]) -> list[Block]:
    seen: dict[str, Block] = {}
    for block in blocks:
        seen.setdefault(block.path, block)
    return list(seen.values())


def _sources(diagnostics: list[Diagnostic]) -> dict[str, str]:
    sources = {}
    for file in {d.file for d in diagnostics}:
        try:
            sources[file] = Path(file).read_text(encoding="utf-8")
        except OSError:
            continue
    return sources


def select_blocks(selector: ir.Selector, block_map: BlockMap) -> list[Block]:
    """The blocks `selector` matches, as a site selector binds them (e.g. the block of a
    `tokens.after(...)` constraint); raises `DeosError` for a selector matching nothing."""
    diagnostics: list[Diagnostic] = []
    blocks = BindSites(ir.Space(name="<selector>"), block_map)._select(selector, diagnostics)
    if diagnostics:
        raise DeosError(with_sources(diagnostics, _sources(diagnostics)))
    return blocks


def bind_sites(space: ir.Space, block_map: BlockMap) -> list[BoundSite]:
    """Run `BindSites` on the block map's graph; returns the bound sites in graph order."""
    bind = BindSites(space, block_map)
    bind(block_map.graph_module)
    return bind.sites
