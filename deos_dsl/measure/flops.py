"""FLOPs of one forward, counted op by op by torch's own `FlopCounterMode`.

An independent check of the symbolic cost model (`deos_dsl.cost`): nothing here reads a graph
or a formula of deos. Counted: matrix products (2*M*K*N), convolutions and fused attention
(2 products of 2*S_q*S_k*D each per head, causal masks not halved). torch does not register
the CPU flash-attention kernel that `F.scaled_dot_product_attention` dispatches to on the CPU,
so it is added here with the same formula as the CUDA kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

Shape = tuple[int, ...]


def attention_flops(query: Shape, key: Shape, value: Shape, *_: Any, **__: Any) -> int:
    """Scores `Q K^T` plus `softmax(.) V` for `query [B, H, S_q, D]`, `key [B, H_kv, S_k, D]`,
    `value [B, H_kv, S_k, D_v]` (grouped keys are broadcast to the query heads)."""
    batch, heads, queries, depth = query
    keys, value_depth = key[2], value[3]
    return 2 * batch * heads * queries * keys * (depth + value_depth)


CPU_ATTENTION: dict[Any, Callable[..., int]] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention_flops,
}


def counted_flops(module: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> int:
    """FLOPs of `module(*args, **kwargs)`, counted without gradients."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    with counter, torch.no_grad():
        module(*args, **(kwargs or {}))
    return int(counter.get_total_flops())
