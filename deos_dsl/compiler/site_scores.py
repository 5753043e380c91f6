"""Importance scores and affinity features computed INSIDE a compiled graph (call_function targets).

Every score is `[B, N]` over the whole stream (higher = keep); the site module restricts it to
the reducible span. `Span = (start, end)` is the reducible span of the stream.
- `query_attention`: attention received from ONE recomputed query row (the last token, CLS, or
  the mean of the text queries = the tokens after the span), from the block's own post-RoPE
  `q [B, H, N, dh]` and `k [B, Hk, N, dh]`, honouring the block's mask (its row for that query),
  `is_causal` and scale, so it works with fused attention kernels;
- `stream_score`: `norm` (hidden-state norm), `text` similarity (to the mean text token),
  `tokens` (ToMe bipartite redundancy on the features, even span offsets may merge), `position`
  (the top-left token of every 2x2 window of the square span grid);
- `mean_keys`: `[B, Hk, N, dh] -> [B, N, dh]`, ToMe's key affinity features.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from deos_dsl.ops import NEG_BIAS, attention_from_query, bipartite_scores, hidden_norm, pool_inputs, text_similarity

Span = tuple[int, int]
QUERIES = ("last", "cls", "text")
STREAM_SCORES = ("norm", "text", "tokens", "position")


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


def query_attention(q: Tensor, k: Tensor, attn_mask: Tensor | None, is_causal: bool, scale: float | None,
                    query: str, *, span: Span) -> Tensor:
    """`[B, N]`: attention each key receives from one query row (`query` in `QUERIES`)."""
    if query not in QUERIES:
        raise ValueError(f"unknown attention query {query!r}; expected one of {QUERIES}")
    n = q.shape[2]
    rows = {"last": [n - 1], "cls": [0], "text": text_rows(n, span)}[query]
    row = q[:, :, rows].mean(dim=2, keepdim=True)
    bias = _mask_row(attn_mask, rows[-1], q.dtype)
    if bias is not None:
        bias = bias.expand(q.shape[0], -1)
    positions = torch.tensor([rows[-1]], device=q.device) if is_causal else None
    return attention_from_query(row, k, scale=scale, query_positions=positions, key_bias=bias)


def mean_keys(k: Tensor) -> Tensor:
    """Keys averaged over heads: `[B, Hk, N, dh] -> [B, N, dh]` (ToMe's metric)."""
    return k.mean(dim=1)


def stream_score(x: Tensor, kind: str, *, span: Span, features: Tensor | None = None) -> Tensor:
    """`[B, N]` score of `kind` (`STREAM_SCORES`) on the stream `x [B, N, D]`."""
    b, n, _ = x.shape
    if kind == "norm":
        return hidden_norm(x)
    if kind == "text":
        return text_similarity(x, x[:, text_rows(n, span)])
    full = x.new_zeros(b, n)
    start, end = span
    if kind == "tokens":
        feats = (x if features is None else features)[:, start:end]
        a_set = torch.arange(end - start, device=x.device) % 2 == 0
        return torch.cat([full[:, :start], bipartite_scores(feats, a_set).to(x.dtype), full[:, end:]], dim=1)
    if kind == "position":
        side = grid_side(span)
        if side is None:
            raise ValueError(f"score `position` needs a square grid of reducible tokens, got {end - start}")
        grid = pool_inputs((side, side), device=x.device)["scores"].to(x.dtype).expand(b, -1)
        return torch.cat([full[:, :start], grid, full[:, end:]], dim=1)
    raise ValueError(f"unknown stream score {kind!r}; expected one of {STREAM_SCORES}")
