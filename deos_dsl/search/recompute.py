"""Activation checkpointing per block for the relaxed graph (`deos search --recompute`).

`recomputed(gm, block_map)` splits the relaxed graph (`torch.fx.passes.split_module`) into one
part per block (the nodes whose module stack is the block's: its own nodes, the masks and scores
inserted into it, the sites called on its stream) and glue parts between them (the nodes of no
block: embeddings, a light attention pass, the head), and calls every block part through
`torch.utils.checkpoint.checkpoint(use_reentrant=False)`: the backward pass recomputes a
block's activations instead of keeping them, so the memory a step holds is the blocks'
boundaries plus one block's activations. The result computes the same values and the same
gradients (every op is deterministic; a site's gate sample is set on its module before the
forward and read again by the recomputation); the site modules are the same objects, so the
optimiser's parameters are unchanged. A graph whose blocks do not split into parts in order
(a node of a block computed after a node of the next one) is a `SearchError`.
"""

from __future__ import annotations

from typing import Any

import torch.utils.checkpoint as checkpoint
from torch import fx, nn
from torch.fx.passes.split_module import split_module

from deos_dsl.compiler.blocks import BlockMap, module_paths
from deos_dsl.errors import SearchError


def through_checkpoint(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """`module(*args, **kwargs)`, its activations recomputed in the backward pass."""
    return checkpoint.checkpoint(module, *args, use_reentrant=False, **kwargs)


def _parts(gm: fx.GraphModule, block_map: BlockMap) -> tuple[dict[fx.Node, int], set[int]]:
    """Each node's part (block `k` of `block_map.blocks()`: `2k + 1`; the glue after it: `2k + 2`;
    before every block: 0) and the set of block parts."""
    blocks = block_map.blocks()
    index = {block.path: i for i, block in enumerate(blocks)}
    parts: dict[fx.Node, int] = {}
    glue = 0
    for node in gm.graph.nodes:
        block = block_map.block_of(node) or next((blocks[index[p]] for p in module_paths(node) if p in index), None)
        if block is None:
            parts[node] = glue
        else:
            parts[node] = 2 * index[block.path] + 1
            glue = parts[node] + 1
    return parts, {2 * i + 1 for i in range(len(blocks))}


def recomputed(gm: fx.GraphModule, block_map: BlockMap) -> fx.GraphModule:
    """The relaxed graph `gm` with every block part called through a checkpoint (module docstring)."""
    parts, block_parts = _parts(gm, block_map)
    try:
        split = split_module(gm, gm, parts.__getitem__, keep_original_order=True)
    except RuntimeError as error:
        raise SearchError(f"--recompute: the graph's blocks do not split into parts in order ({error})",
                          "run the search without --recompute") from None
    for node in list(split.graph.nodes):
        if node.op == "call_module" and int(str(node.target).removeprefix("submod_")) in block_parts:
            with split.graph.inserting_before(node):
                module = split.graph.get_attr(node.target)
                call = split.graph.call_function(through_checkpoint, (module, *node.args), dict(node.kwargs))
            node.replace_all_uses_with(call)
            split.graph.erase_node(node)
    split.graph.lint()
    split.recompile()
    return split
