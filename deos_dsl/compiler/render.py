"""Rich tables for `deos compile`: the block map and the bound sites."""

from __future__ import annotations

from rich.table import Table

from .blocks import Block, BlockMap
from .sites import BoundSite


def _shape(block: Block) -> str:
    return "[" + ", ".join(block.shape) + "]"


def _span(span: tuple[int, int] | None) -> str:
    return f"[{span[0]}, {span[1]})" if span else "-"


def _side(block: Block) -> str:
    side = [f"{s.kind} {s.node.name} [{', '.join(s.shape)}]" for s in block.side]
    reads = [f"length {n.name}" for n in block.length_reads]
    return "\n".join(side + reads) or "none"


def block_table(block_map: BlockMap) -> Table:
    """One row per stack (and the projector): role, blocks, stream shape, span, side inputs."""
    table = Table(title="block map", title_justify="left")
    for column in ("stack", "role", "blocks", "stream [B, N, D]", "reducible span", "side tensors"):
        table.add_column(column)
    for stack in block_map.stacks:
        first = stack.blocks[0]
        table.add_row(f"{stack.prefix}.*", stack.role or "-", str(len(stack.blocks)), _shape(first),
                      _span(block_map.spans.get(stack.role or "")), _side(first))
    if block_map.projector is not None:
        projector = block_map.projector
        table.add_row(projector.path, "projector", "1", _shape(projector), _span(block_map.spans.get("projector")),
                      _side(projector))
    return table


def sites_table(space_name: str, sites: list[BoundSite]) -> Table:
    """One row per bound site: name, selector, block, role, position in the block, stream node
    and the block's stream shape."""
    table = Table(title=f"bound sites of space `{space_name}`", title_justify="left")
    for column in ("site", "selector", "block", "role", "at", "stream node", "stream"):
        table.add_column(column)
    for site in sites:
        table.add_row(site.name, site.selector, site.block.path, site.block.role or "-", site.position, site.node.name,
                      _shape(site.block))
    return table
