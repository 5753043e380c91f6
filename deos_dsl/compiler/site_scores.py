"""Importance scores and affinity features computed INSIDE a compiled graph (call_function targets):
the torch side of the score table `deos_dsl.frontend.vocab.SCORES`.

Every score is `[B, N]` over the whole stream (higher = keep); the site module restricts it to
the reducible span. `Span = (start, end)` is the reducible span of the stream.
- `query_attention` (the `attention` score): attention received from ONE recomputed query row
  (`QUERY_ROWS`: the last token, CLS, or the mean of the text queries = the tokens after the
  span), from the block's own post-RoPE `q [B, H, N, dh]` and `k [B, Hk, N, dh]`, honouring
  the block's mask (its row for that query), `is_causal` and scale, so it works with fused
  attention kernels;
- `stream_score`: every other score, computed on the block's output stream by its kernel in
  `STREAM_KERNELS`: `norm` (hidden-state norm), `similarity` to `text` (the mean text token)
  or to `tokens` (ToMe bipartite redundancy on the features, even span offsets may merge),
  `position` (the top-left token of every 2x2 window of the square span grid);
- `mean_keys`: `[B, Hk, N, dh] -> [B, N, dh]`, ToMe's key affinity features.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from deos_dsl.ops import NEG_BIAS, attention_from_query, bipartite_scores, hidden_norm, pool_inputs, text_similarity

Span = tuple[int, int]


def grid_side(span: Span) -> int | None:
    """The side of the square grid the span's tokens form (None: their count is no square)."""
    side = math.isqrt(span[1] - span[0])
    return side if side * side == span[1] - span[0] else None


def text_rows(n: int, span: Span) -> list[int]:
    """The text tokens: after the span, else every position outside it."""
    after = list(range(span[1], n))
    return after or [i for i in range(n) if not span[0] <= i < span[1]]


def _mask_row(attn_mask: Tensor | None, row: int, dtype: torch.dtype) -> Tensor | None:
    """Additive key bias `[B or 1, N]` of query `row` from a `[B?, H?, Nq, Nk]` mask."""
    if attn_mask is None:
        return None
    picked = attn_mask[..., row, :]  # [B?, H?, Nk]; masks broadcast over heads: take the first
    while picked.dim() > 2:
        picked = picked[:, 0]
    picked = picked if picked.dim() == 2 else picked[None]
    if picked.dtype == torch.bool:
        return torch.where(picked, 0.0, NEG_BIAS).to(dtype)
    return picked.to(dtype).clamp_min(NEG_BIAS)


QUERY_ROWS: dict[str, Callable[[int, Span], list[int]]] = {
    "last": lambda n, span: [n - 1],
    "cls": lambda n, span: [0],
    "text": text_rows,
}


def query_attention(q: Tensor, k: Tensor, attn_mask: Tensor | None, is_causal: bool, scale: float | None,
                    query: str, *, span: Span) -> Tensor:
    """`[B, N]`: attention each key receives from one query row (`query` in `QUERY_ROWS`)."""
    n = q.shape[2]
    rows = QUERY_ROWS[query](n, span)
    row = q[:, :, rows].mean(dim=2, keepdim=True)
    bias = _mask_row(attn_mask, rows[-1], q.dtype)
    if bias is not None:
        bias = bias.expand(q.shape[0], -1)
    positions = torch.tensor([rows[-1]], device=q.device) if is_causal else None
    return attention_from_query(row, k, scale=scale, query_positions=positions, key_bias=bias)


def mean_keys(k: Tensor) -> Tensor:
    """Keys averaged over heads: `[B, Hk, N, dh] -> [B, N, dh]` (ToMe's metric)."""
    return k.mean(dim=1)


def _in_span(x: Tensor, span: Span, scores: Tensor) -> Tensor:
    """`[B, N]`: `scores [B, |span|]` on the span, 0 elsewhere."""
    full = x.new_zeros(x.shape[0], x.shape[1])
    return torch.cat([full[:, :span[0]], scores.to(x.dtype), full[:, span[1]:]], dim=1)


def _similarity(x: Tensor, to: str | None, span: Span, features: Tensor | None) -> Tensor:
    if to == "text":
        return text_similarity(x, x[:, text_rows(x.shape[1], span)])
    feats = (x if features is None else features)[:, span[0]:span[1]]
    a_set = torch.arange(span[1] - span[0], device=x.device) % 2 == 0
    return _in_span(x, span, bipartite_scores(feats, a_set))


def _position(x: Tensor, option: str | None, span: Span, features: Tensor | None) -> Tensor:
    side = grid_side(span)
    if side is None:
        raise ValueError(f"score `position` needs a square grid of reducible tokens, got {span[1] - span[0]}")
    return _in_span(x, span, pool_inputs((side, side), device=x.device)["scores"].expand(x.shape[0], -1))


StreamKernel = Callable[[Tensor, str | None, Span, Tensor | None], Tensor]
STREAM_KERNELS: dict[str, StreamKernel] = {
    "norm": lambda x, option, span, features: hidden_norm(x),
    "similarity": _similarity,
    "position": _position,
}


def stream_score(x: Tensor, kind: str, option: str | None, *, span: Span, features: Tensor | None = None) -> Tensor:
    """`[B, N]` score `kind` (with its `option`) on the stream `x [B, N, D]` (`STREAM_KERNELS`)."""
    return STREAM_KERNELS[kind](x, option, span, features)
