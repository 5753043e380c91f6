"""Site selectors -> the blocks they match (what pass 1, bind_sites, binds; also the block of a
`tokens.after(...)` constraint).

Role selectors index the block lists of the block map (`decoder.layers[2]`, `[-1]`,
`[2:16:2]`, `[25%]` = layer floor(25/100 * L), `[100%]` = the last layer, `[*]`,
`projector`); module selectors glob over block paths (`*` one path segment, `**` any number,
`?` one character). A selector that matches nothing is a positioned `Diagnostic` with a
did-you-mean hint from the model's real roles and paths; so is one single layer (`[i]`, `[p%]`)
whose output the model's first output (logits, or an encoder's last hidden state) does not
depend on (LLaVA-1.5's last vision layer: its projector reads layer -2), where a reduction
would change nothing. Lists, slices and `[*]`
keep such a layer (its site is then a no-op, as ToMe's on every layer).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import networkx as nx
from torch import fx
from torch.utils._pytree import tree_leaves

from deos_dsl.errors import Diagnostic, SpaceError
from deos_dsl.frontend import ir
from deos_dsl.frontend.diagnostics import suggest, with_sources

from .blocks import Block, BlockMap, dataflow
from .prelude import LanguageHead


def layer_index(num: ir.Num, length: int) -> int:
    """A point: an integer (negative from the end) or `p%` = floor(p/100 * L), 100% = last."""
    if num.unit == "%":
        return min(math.floor(num.value / 100 * length), length - 1)
    value = int(num.value)
    return value + length if value < 0 else value


def glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` = one dotted segment, `**` = any number of segments, `?` = one character."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    table = {"**": r".*", "*": r"[^.]+", "?": r"[^.]"}
    return re.compile("".join(table.get(part, re.escape(part)) for part in parts) + r"\Z")


def select(selector: ir.Selector, block_map: BlockMap, diagnostics: list[Diagnostic]) -> list[Block]:
    """The blocks `selector` matches, in block order, each once; appends a diagnostic (and
    returns []) where it matches nothing."""
    if isinstance(selector, ir.ModuleSelector):
        return _select_module(selector, block_map, diagnostics)
    lists = block_map.role_lists()
    path = ".".join(selector.path)
    if path not in lists:
        known = ", ".join(f"`{name}`" for name in lists) or "none"
        hint = suggest(path, lists) or f"this model's block lists: {known}"
        if isinstance(block_map.traced.root, LanguageHead) and selector.role in ("vision", "projector"):
            hint = ("this model is split at its language model (docs/compiler.md): its vision tower and merger run "
                    "before the traced graph; the merger's tokens are those entering the decoder, reduced by "
                    "`site decoder.layers[0] { at: before }`")
        report_at(diagnostics, selector, f"the model has no `{path}` (no {selector.role} blocks were found)", hint)
        return []
    blocks = lists[path]
    if selector.index is None or selector.index.every:
        return list(blocks)
    chosen: list[Block] = []
    for item in selector.index.items:
        chosen += _select_item(item, path, blocks, diagnostics)
    if len(selector.index.items) == 1 and isinstance(selector.index.items[0], ir.Point) and chosen \
            and _unused(block_map, chosen[0]):
        report_at(diagnostics, selector.index.items[0], f"`{path}` layer {chosen[0].index} is block `{chosen[0].path}`, "
                  "whose output the model's result does not depend on (it reads an earlier layer): a reduction "
                  "there changes nothing",
                  "select a layer the model reads, e.g. `[-2]` on LLaVA-1.5, whose projector reads layer -2")
        return []
    return list({block.path: block for block in chosen}.values())


def _unused(block_map: BlockMap, block: Block) -> bool:
    """Whether the model's first output (its logits, or an encoder's last hidden state) does not
    depend on `block`'s output (an HF VLM also returns the vision tower's last state, unread)."""
    (output,) = block_map.graph_module.graph.find_nodes(op="output")
    first = next((leaf for leaf in tree_leaves(output.args[0]) if isinstance(leaf, fx.Node)), None)
    return first is not None and block.exit is not first and not nx.has_path(dataflow(block_map.graph_module),
                                                                              block.exit, first)


def raise_diagnostics(diagnostics: list[Diagnostic]) -> None:
    """Raise them as one `SpaceError` (with their source lines), if there are any."""
    if diagnostics:
        raise SpaceError(with_sources(diagnostics, _sources(diagnostics)))


def select_blocks(selector: ir.Selector, block_map: BlockMap) -> list[Block]:
    """`select`, raising `SpaceError` for a selector matching nothing."""
    diagnostics: list[Diagnostic] = []
    blocks = select(selector, block_map, diagnostics)
    raise_diagnostics(diagnostics)
    return blocks


def report_at(diagnostics: list[Diagnostic], node: ir.Node, message: str, hint: str | None = None) -> None:
    span = node.span  # None for spaces built in code: reported at <space>:1:1
    if span is None:
        diagnostics.append(Diagnostic("<space>", 1, 1, message, hint=hint))
    else:
        diagnostics.append(Diagnostic(span.file, span.line, span.col, message, span.end_line, span.end_col, hint=hint))


def _slice_bound(num: ir.Expr | None, length: int) -> int | None:
    if num is None:
        return None
    assert isinstance(num, ir.Num)
    return math.floor(num.value / 100 * length) if num.unit == "%" else int(num.value)


def _select_item(item: ir.IndexItem, path: str, blocks: list[Block], diagnostics: list[Diagnostic]) -> list[Block]:
    length = len(blocks)
    if isinstance(item, ir.Point):
        assert isinstance(item.at, ir.Num)
        index = layer_index(item.at, length)
        if 0 <= index < length:
            return [blocks[index]]
        report_at(diagnostics, item, f"layer index {item.at.value:g} is out of range for `{path}` "
               f"({length} layers: 0..{length - 1})", f"use an index in [-{length}, {length - 1}] or a depth percent")
        return []
    for bound in (item.start, item.stop):  # an explicit layer number past the model is a space for another model
        if isinstance(bound, ir.Num) and bound.unit != "%" and not -length <= bound.value <= length:
            report_at(diagnostics, item, f"the slice bound {bound.value:g} is past `{path}`, which has {length} layers "
                   f"(0..{length - 1})", f"use bounds in [-{length}, {length}], leave the stop open (`[a:]`) or use depth percents")
            return []
    step = _slice_bound(item.step, length)
    chosen = blocks[_slice_bound(item.start, length):_slice_bound(item.stop, length):step]
    if not chosen:
        report_at(diagnostics, item, f"the slice selects no layer of `{path}` ({length} layers)")
    return chosen


def _select_module(selector: ir.ModuleSelector, block_map: BlockMap, diagnostics: list[Diagnostic]) -> list[Block]:
    blocks = block_map.blocks()
    regex = glob_regex(selector.pattern)
    chosen = [block for block in blocks if regex.match(block.path)]
    if chosen:
        return chosen
    stacks = " or ".join(f"`{s.prefix}.*`" for s in block_map.stacks)
    modules = [path for path in block_map.module_paths if regex.match(path)]
    if modules:
        report_at(diagnostics, selector, f"module path `{selector.pattern}` matches {len(modules)} module(s) "
               f"(e.g. `{modules[0]}`) but no block: sites sit at block outputs", f"blocks are {stacks}")
    else:
        hint = suggest(selector.pattern, [block.path for block in blocks])
        report_at(diagnostics, selector, f"module path `{selector.pattern}` matches no block of the model",
               hint or f"blocks are {stacks}")
    return chosen


def _sources(diagnostics: list[Diagnostic]) -> dict[str, str]:
    sources = {}
    for file in {d.file for d in diagnostics}:
        try:
            sources[file] = Path(file).read_text(encoding="utf-8")
        except OSError:
            continue
    return sources
