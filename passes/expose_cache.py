"""Pass 7 (generation): return each decoder layer's REDUCED key-value cache from the prefill graph.

An emitted graph is the prefill of a generative decoder, traced without a cache. For decoding,
every layer's keys and values must be kept as that layer saw them: only the tokens that reached
it, each at its original position (RoPE already applied). For each decoder attention
(`scaled_dot_product_attention`, one per layer, given in layer order) the pass appends to the
graph's outputs:

- `key`, `value` `[B, H_kv, T_l, hd]`: the attention's key and value inputs with the GQA head
  repetition undone (HF's `repeat_kv` gives query head `h` the kv head `h // groups`, so every
  `groups`-th head is the cached one; `enable_gqa` attentions already read `H_kv` heads);
  `T_l` is the number of tokens that reached layer `l`;
- `visible` `[B, 1, 1, T_l]`: the mask row of the prompt's LAST query (bool, or the additive
  float row as the graph has it; all-true when the attention has no mask): what a token
  appended after the prompt sees of this layer's cache.

The graph then returns `(output, ((key_0, value_0, visible_0), ...))`: the original output is
unchanged, node for node. Shape (torch.fx `PassBase`): `requires` checks the nodes are attention
calls of this graph and `groups` divides their heads; `call` edits; `ensures` lints and checks
the new outputs' shapes from the nodes' fake values.
"""

from __future__ import annotations

import torch
from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult
from torch.utils import _pytree as pytree

from deos_dsl.compiler.graph_edit import is_sdpa, sdpa_argument

aten = torch.ops.aten
EVERY = 2**63 - 1  # a slice's open end


class ExposeCache(PassBase):
    """Append each attention's `(key, value, visible)` to the graph's outputs (module docstring)."""

    def __init__(self, attentions: list[fx.Node], groups: list[int]) -> None:
        self.attentions, self.groups = attentions, groups
        self.exposed: list[tuple[fx.Node, fx.Node, fx.Node]] = []

    def requires(self, graph_module: fx.GraphModule) -> None:
        nodes = set(graph_module.graph.nodes)
        if len(self.attentions) != len(self.groups):
            raise AssertionError("expose_cache: one head-group count per attention")
        for node, groups in zip(self.attentions, self.groups):
            if node not in nodes or not is_sdpa(node):
                raise AssertionError(f"expose_cache: {node} is not an attention call of this graph")
            heads = node.args[1].meta["val"].shape[1]
            if sdpa_argument(node, "enable_gqa") is not True and heads % groups:
                raise AssertionError(f"expose_cache: {groups} head groups do not divide the {heads} heads of {node}")

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        graph = graph_module.graph
        output = next(node for node in reversed(graph.nodes) if node.op == "output")
        with graph.inserting_before(output):
            self.exposed = [self._cache_of(graph, node, groups) for node, groups in zip(self.attentions, self.groups)]
        flat = [node for entry in self.exposed for node in entry]
        codegen = graph._codegen
        if isinstance(codegen, fx.graph._PyTreeCodeGen):  # an exported graph returns a flattened pytree
            leaves = list(output.args[0])
            old_spec = codegen.pytree_info.out_spec
            cache_spec = pytree.tree_structure(tuple((0, 0, 0) for _ in self.exposed))
            output.args = (leaves + flat,)
            codegen.pytree_info = codegen.pytree_info._replace(
                out_spec=pytree.tree_structure((pytree.tree_unflatten([0] * old_spec.num_leaves, old_spec),
                                                pytree.tree_unflatten([0] * len(flat), cache_spec))))
        else:
            output.args = ((output.args[0], tuple(self.exposed)),)
        graph_module.recompile()
        return PassResult(graph_module, True)

    @staticmethod
    def _cache_of(graph: fx.Graph, node: fx.Node, groups: int) -> tuple[fx.Node, fx.Node, fx.Node]:
        key, value, mask = node.args[1], node.args[2], sdpa_argument(node, "attn_mask")
        if groups > 1 and sdpa_argument(node, "enable_gqa") is not True:
            key = graph.call_function(aten.slice.Tensor, (key, 1, 0, EVERY, groups))
            value = graph.call_function(aten.slice.Tensor, (value, 1, 0, EVERY, groups))
        if isinstance(mask, fx.Node):
            visible = graph.call_function(aten.slice.Tensor, (mask, 2, -1, EVERY))
            visible = graph.call_function(aten.slice.Tensor, (visible, 1, 0, 1))
        else:  # no mask: the last query sees every key
            row = graph.call_function(aten.select.int, (node.args[1], 3, 0))  # [B, H, T_l]
            row = graph.call_function(aten.slice.Tensor, (row, 1, 0, 1))
            visible = graph.call_function(aten.ones_like.default, (graph.call_function(aten.unsqueeze.default, (row, 2)),),
                                          {"dtype": torch.bool})
        return key, value, visible

    def ensures(self, graph_module: fx.GraphModule) -> None:
        graph_module.graph.lint()
        for (key, value, visible), node in zip(self.exposed, self.attentions):
            for exposed in (key, value, visible):
                if exposed not in graph_module.graph.nodes:
                    raise AssertionError(f"expose_cache: the cache of {node} left the graph")


def expose_cache(graph_module: fx.GraphModule, attentions: list[fx.Node], groups: list[int]) -> fx.GraphModule:
    """Run `ExposeCache` on `graph_module` (edited in place); returns it."""
    ExposeCache(attentions, groups)(graph_module)
    return graph_module
