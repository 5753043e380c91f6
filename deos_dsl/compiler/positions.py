"""Where in a block a site reduces (`at:` in the language): the stream node of each position,
and the block's attention a `before` site scores with.

- `after` (the default): the block's output stream `exit`;
- `before`: the stream ENTERING the block (`entry`; the same tensor as the previous block's
  output, but an attention score is computed with THIS block's projections, `light_attention`);
- `mid`: between the block's attention and its MLP: the first stream-shaped node after the
  block's (last) attention that every path from the block's entry to its exit passes through
  (a dominator: the attention's residual add in a pre-norm block, `x + attn(norm(x))`). The
  MLP part of the block then runs on the reduced tokens, as ToMe and EViT reduce. A block
  without attention, or whose later nodes read the stream other than through one such node
  (e.g. a parallel attention + MLP block), has no `mid`: `mid_stream` returns None.

`light_attention` is PyramidDrop's "light attention pass": the nodes of a block that compute
its attention inputs (q and k of `scaled_dot_product_attention`; the probabilities of attention
computed eagerly) copied onto the stream entering it, so a site before the block ranks tokens by
the attention the block WOULD pay them, while the block itself then runs on the kept tokens.
"""

from __future__ import annotations

import networkx as nx
from torch import fx

from deos_dsl.errors import DeosCompileError

from .blocks import Block, shape_of
from .graph_edit import eager_attention_nodes, sdpa_argument, sdpa_nodes

META_LIGHT = "deos_light"  # on the copied nodes of a light attention pass: (site name, block path)


def attention_node(block: Block) -> fx.Node | None:
    """The block's last `scaled_dot_product_attention`, else its last eager attention softmax."""
    found = sdpa_nodes(block.nodes) or eager_attention_nodes(block.nodes)
    return found[-1] if found else None


def mid_stream(block: Block) -> fx.Node | None:
    """The block's stream between its attention and its MLP (module docstring), or None."""
    attention = attention_node(block)
    if attention is None:
        return None
    members = set(block.nodes)
    flow = nx.DiGraph()
    flow.add_node(block.entry)
    flow.add_edges_from((arg, node) for node in block.nodes for arg in node.all_input_nodes
                        if arg in members or arg is block.entry)
    if block.exit not in flow or not nx.has_path(flow, block.entry, block.exit):
        return None
    dominator = nx.immediate_dominators(flow, block.entry)
    chain, node = [], dominator[block.exit]
    while node is not block.entry:
        chain.append(node)
        node = dominator[node]
    order = {node: i for i, node in enumerate(block.nodes)}
    stream = shape_of(block.entry)
    after = [node for node in chain if order[node] > order[attention] and shape_of(node) == stream]
    return min(after, key=order.__getitem__) if after else None


def light_passes(graph: fx.Graph) -> dict[str, list[fx.Node]]:
    """`site name -> the nodes of its light attention pass` (copies, score and features tagged
    `META_LIGHT`), each list in graph order."""
    passes: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if META_LIGHT in node.meta:
            passes.setdefault(node.meta[META_LIGHT][0], []).append(node)
    return passes


def site_stream(block: Block, position: str) -> fx.Node | None:
    """The stream node a site `at: position` of `block` reduces (None: the block has no `mid`)."""
    if position == "before":
        return block.entry
    if position == "mid":
        return mid_stream(block)
    return block.exit


def light_attention(block: Block, site: str) -> dict[fx.Node, fx.Node]:
    """Copy the nodes of `block` that compute its attention's inputs (q, k and mask of its last
    `scaled_dot_product_attention`; the probabilities its last eager softmax returns) onto its
    entry stream, right before the block's first node (module docstring). Returns `original -> copy` for every
    copied node. Each copy is tagged `meta[META_LIGHT] = site` and belongs to no block (no
    `nn_module_stack`): it reads the block's side tensors as they are before the site.

    Raises `DeosCompileError` when the block's attention reads a value computed after the
    block's first node."""
    attention = attention_node(block)
    assert attention is not None, "the caller checks the block has attention"
    targets = [sdpa_argument(attention, name) for name in ("query", "key", "attn_mask")] \
        if attention in sdpa_nodes(block.nodes) else [attention]
    members = set(block.nodes)
    needed: set[fx.Node] = set()
    todo = [node for node in targets if isinstance(node, fx.Node) and node in members]
    while todo:
        node = todo.pop()
        if node not in needed:
            needed.add(node)
            todo += [arg for arg in node.all_input_nodes if arg in members]
    first = block.nodes[0]
    late = [arg for node in needed for arg in node.all_input_nodes if arg not in needed and arg > first]
    if late:
        raise DeosCompileError(f"site `{site}` before block `{block.path}` scores with the block's attention, which reads "
                               f"`{late[0].name}`, computed inside the block's first nodes",
                               "put the site `at: after` the previous block, or score it without attention")
    copies: dict[fx.Node, fx.Node] = {}
    for node in sorted(needed):
        with block.entry.graph.inserting_before(first):
            copy = copies[node] = block.entry.graph.node_copy(node, lambda arg: copies.get(arg, arg))
        copy.meta.pop("nn_module_stack", None)
        copy.meta[META_LIGHT] = (site, block.path)
    return copies
