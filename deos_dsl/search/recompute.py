"""The relaxed graph in one part per block: activation checkpointing per block (`deos search
--recompute`) and the units `--shard` shards (`ddp.shard`).

`partitioned(gm, block_map, checkpointed)` splits the relaxed graph (`torch.fx.passes.split_module`)
into one part per block (the nodes whose module stack is the block's: its own nodes, the masks and
scores inserted into it, the sites called on its stream) and glue parts between them (the nodes
of no block: embeddings, a light attention pass, the head); `checkpointed` calls every block part
through `torch.utils.checkpoint.checkpoint(use_reentrant=False)`: the backward pass recomputes a
block's activations instead of keeping them, so the memory a step holds is the blocks'
boundaries plus one block's activations. `split_module` hands a part the root's weights as
inputs; a block part is given its own weights instead (`_own_weights`: every parameter only that
part reads is registered on it), so sharding a part shards its weights. The result computes the same values and the same
gradients (every op is deterministic; a site's gate sample is set on its module before the
forward and read again by the recomputation); the site modules are the same objects, so the
optimiser's parameters are unchanged. A graph whose blocks do not split into parts in order
(a node of a block computed after a node of the next one) is a `SearchError`.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def _parameter(split: fx.GraphModule, arg: Any) -> nn.Parameter | None:
    """The parameter `arg` reads when it is a `get_attr` of one, else None."""
    if not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
        return None
    value = split
    for name in str(arg.target).split("."):
        value = getattr(value, name, None)
    return value if isinstance(value, nn.Parameter) else None


def _own_weights(split: fx.GraphModule, call: fx.Node, part: fx.GraphModule) -> None:
    """Register on `part` (called by `call`) every parameter of `split` that it alone reads, and
    read it there with `get_attr` instead of taking it as an input."""
    placeholders = list(part.graph.find_nodes(op="placeholder"))
    kept = []
    for arg, placeholder in zip(call.args, placeholders):
        weight = _parameter(split, arg)
        if weight is None or set(arg.users) != {call}:
            kept.append(arg)
            continue
        name = str(arg.target).replace(".", "_")
        part.register_parameter(name, weight)
        with part.graph.inserting_before(placeholder):
            read = part.graph.get_attr(name)
        read.meta = dict(placeholder.meta)
        placeholder.replace_all_uses_with(read)
        part.graph.erase_node(placeholder)
    call.args = tuple(kept)
    part.recompile()


@dataclass(frozen=True)
class Parts:
    """The split graph (`module`, computing what the relaxed graph computes) and its block
    parts (`blocks`, in block order)."""

    module: fx.GraphModule
    blocks: list[nn.Module]


def partitioned(gm: fx.GraphModule, block_map: BlockMap, checkpointed: bool) -> Parts:
    """The relaxed graph `gm` split into block and glue parts, block parts called through a
    checkpoint when `checkpointed` (module docstring)."""
    parts, block_parts = _parts(gm, block_map)
    try:
        split = split_module(gm, gm, parts.__getitem__, keep_original_order=True)
    except RuntimeError as error:
        raise SearchError(f"the graph's blocks do not split into parts in order ({error})",
                          "run the search without --recompute and --shard") from None
    blocks = []
    for node in list(split.graph.nodes):
        if node.op == "call_module" and int(str(node.target).removeprefix("submod_")) in block_parts:
            blocks.append(split.get_submodule(str(node.target)))
            _own_weights(split, node, blocks[-1])
            if not checkpointed:
                continue
            with split.graph.inserting_before(node):
                module = split.graph.get_attr(node.target)
                call = split.graph.call_function(through_checkpoint, (module, *node.args), dict(node.kwargs))
            node.replace_all_uses_with(call)
            split.graph.erase_node(node)
    split.graph.eliminate_dead_code()
    split.graph.lint()
    split.recompile()
    return Parts(split, blocks)
