"""The conformance suite: every model's formulas equal FlopCounterMode, node by node at the traced
size and block by block at three token counts; where FlopCounterMode is blind (the CPU fused
attention kernel) the count equals the hand formula QK^T + AV."""

from __future__ import annotations

from typing import Any

import pytest
import sympy
import torch
from torch import fx, nn

from cost_cases import CASES, PerNode, counted, loaded, mapped, placeholders
from deos_dsl.compiler import Block
from deos_dsl.compiler.graph_edit import is_sdpa, sdpa_argument
from deos_dsl.cost import Cost
from deos_dsl.cost.symbols import B, N_TEXT, N_VIS
from deos_dsl.passes.attach_cost import META_COST


def _node_flops(cost: Cost, node: fx.Node, kinds: tuple[str, ...] | None = None) -> int:
    return sum(cost.evaluate(e, cost.point()) for k, e in node.meta[META_COST].items() if kinds is None or k in kinds)


def _attention_by_hand(node: fx.Node) -> int:
    q, k, v = (sdpa_argument(node, name).meta["val"].shape for name in ("query", "key", "value"))
    return 2 * q[0] * q[1] * q[2] * k[2] * (q[3] + v[3])


@pytest.mark.parametrize("name,tracer", CASES)
def test_every_node_equals_flop_counter_mode(name: str, tracer: str):
    block_map, cost = mapped(name, tracer)
    gm, model = block_map.graph_module, loaded(name)
    run = PerNode(gm)
    run.run(*placeholders(gm, model.args, model.kwargs))
    blind = 0
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        ours, theirs = _node_flops(cost, node), run.counts[node]
        if is_sdpa(node) and theirs == 0:  # the CPU kernel: FlopCounterMode counts 0, we must not
            assert ours == _attention_by_hand(node) > 0, node.name
            blind += 1
        else:
            assert ours == theirs, (node.name, str(node.target), ours, theirs)
    assert blind == sum(is_sdpa(n) for n in gm.graph.nodes) > 0
    assert cost.uncounted == []


def _block_calls(model: nn.Module, blocks: list[Block], run: Any) -> dict[str, tuple[tuple, dict]]:
    """The (args, kwargs) each block module is called with during `run()`."""
    calls: dict[str, tuple[tuple, dict]] = {}
    hooks = [model.get_submodule(block.path).register_forward_pre_hook(
        lambda module, args, kwargs, path=block.path: calls.setdefault(path, (args, kwargs)) and None, with_kwargs=True)
        for block in blocks]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _shortened(value: Any, length: int, keep: int) -> Any:
    """Every tensor of a block call with its token axes (past the batch, of `length`) cut to `keep`."""
    if isinstance(value, torch.Tensor):
        for axis in range(1, value.ndim):
            if value.shape[axis] == length:
                value = value.narrow(axis, 0, keep)
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_shortened(v, length, keep) for v in value)
    if isinstance(value, dict):
        return {k: _shortened(v, length, keep) for k, v in value.items()}
    return value


def _block_formula(block: Block) -> sympy.Expr:
    """Every node of the block costed (dead ones too: the eager module runs them)."""
    return sympy.Add(*(e for node in block.nodes for e in node.meta.get(META_COST, {}).values()))


@pytest.mark.parametrize("name,tracer", CASES)
def test_blocks_at_three_token_counts(name: str, tracer: str):
    """One trace gives each block's FLOPs as a formula in its token count: evaluated at the
    traced count and two smaller ones it equals FlopCounterMode on the eager block module run
    at that count (math attention backend, so attention is counted too)."""
    block_map, cost = mapped(name, tracer)
    model = loaded(name)
    blocks = [block for stack in block_map.stacks for block in stack.blocks]
    calls = _block_calls(model.model, blocks, lambda: model.model(*model.args, **model.kwargs))
    checked = 0
    for block in blocks:
        length = int(block.entry.meta["val"].shape[1])
        symbol = next(iter(sorted(cost.groups[[g.name for g in cost.groups].index(block.path)].length.free_symbols,
                                  key=lambda s: s.name)))
        for keep in (length, length - 3, length // 2):
            point = cost.point()
            point[symbol] += keep - length
            args, kwargs = _shortened(calls[block.path], length, keep)
            module = model.model.get_submodule(block.path)
            with torch.no_grad():
                theirs = counted(lambda: module(*args, **kwargs), math=True)
            assert cost.evaluate(_block_formula(block), point) == theirs, (block.path, keep)
            checked += 1
    assert checked == 3 * len(blocks)


def _qwen_embeds(batch: int, length: int) -> dict[str, Any]:
    embeds = torch.randn(batch, length, 32, generator=torch.Generator().manual_seed(1))
    return {"inputs_embeds": embeds, "use_cache": False}


@pytest.mark.parametrize("batch,text", [(2, 8), (2, 3), (3, 12)])
def test_whole_decoder_at_other_token_counts_and_batches(batch: int, text: int):
    """The dense formula of Qwen2 (exported once at B=2, 24 tokens) at other text lengths and
    batches equals FlopCounterMode on the eager model run with them."""
    _, cost = mapped("hf:Qwen2Model")
    point = cost.point()
    point.update({B: batch, N_TEXT: text})
    model = loaded("hf:Qwen2Model").model
    with torch.no_grad():
        theirs = counted(lambda: model(**_qwen_embeds(batch, text + point[N_VIS])), math=True)
    assert cost.evaluate(cost.model(), point) == theirs


def test_llava_text_length():
    """LLaVA's decoder length is N_text + N_vis (the image placeholders): more text tokens in
    `input_ids` cost what the formula says, the vision tower and projector unchanged. What the
    model runs beyond its outputs (`Cost.dead`: e.g. a vision layer after the one LLaVA reads,
    when the release does not return it) is measured on this model's graph, possibly zero."""
    _, cost = mapped("hf:LlavaForConditionalGeneration")
    model = loaded("hf:LlavaForConditionalGeneration")
    ids = model.kwargs["input_ids"]
    longer = torch.cat([ids, ids[:, -5:]], dim=1)
    with torch.no_grad():
        base = counted(lambda: model.model(**model.kwargs), math=True)
        more = counted(lambda: model.model(**dict(model.kwargs, input_ids=longer)), math=True)
    point = cost.point()
    point[N_TEXT] += 5
    dead_code = sympy.Add(*cost.dead.values())
    for at, theirs in ((cost.point(), base), (point, more)):
        assert theirs == cost.evaluate(cost.model(), at) + cost.evaluate(dead_code, at)
    assert more > base
