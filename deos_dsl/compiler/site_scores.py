"""Importance scores and affinity features computed INSIDE a compiled graph (call_function targets):
the torch side of the score table `deos_dsl.frontend.vocab.SCORES`.

Every score is `[B, N]` over the whole stream (higher = keep); the site module restricts it to
the reducible span. `Span = (start, end)` is the reducible span of the stream.
- `query_attention` (the `attention` score): attention received from ONE recomputed query row
  (`QUERY_ROWS`: the last token, CLS, or the mean of the text queries = the tokens after the
  span), or SparseVLM's `raters` (the text rows whose attention to the span is at least the
  text rows' mean, their attention rows averaged: `rater_scores`), from the block's own
  post-RoPE `q [B, H, N, dh]` and `k [B, Hk, N, dh]`, honouring
  the block's mask (its row for that query), `is_causal` and scale, so it works with fused
  attention kernels; in a right-padded batch each example's own last real token and text
  rows (the tokens the mask lets the last row attend);
- `weights_attention`: the same rows read from the probabilities of attention computed eagerly
  (matmul + softmax), where no fused node holds q and k;
- `stream_score`: every other score, computed on the block's output stream by its kernel in
  `STREAM_KERNELS`: `norm` (hidden-state norm), `similarity` to `text` (the mean text token)
  or to `tokens` (ToMe bipartite redundancy on the features: tokens at even stream positions
  may merge into those at odd ones, ToMe's alternation over the whole sequence),
  `position` (the top-left token of every 2x2 window of the square span grid), `random` (a
  fixed pseudo-random order of the span's positions, `ops.random_order`: the random-keep baseline);
- `mean_keys`: `[B, Hk, N, dh] -> [B, N, dh]`, ToMe's key affinity features.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from deos_dsl.ops import (NEG_BIAS, attention_from_query, bipartite_scores, hidden_norm, pool_inputs, random_order, rater_scores,
                          text_similarity)

from .site_transfer import bipartite_destinations

Span = tuple[int, int]


def grid_side(span: Span) -> int | None:
    """The side of the square grid the span's tokens form (None: their count is no square)."""
    side = math.isqrt(span[1] - span[0])
    return side if side * side == span[1] - span[0] else None


def _mask3(attn_mask: Tensor) -> Tensor:
    """A `[B?, H?, Nq, Nk]` attention mask as `[B or 1, Nq, Nk]` (masks broadcast over heads:
    the first head is taken)."""
    mask = attn_mask
    while mask.dim() > 3:
        mask = mask[:, 0]
    return mask if mask.dim() == 3 else mask[None]


def _as_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A mask's values as an additive bias: a boolean one 0 where allowed, `NEG_BIAS` elsewhere;
    a float one clamped at `NEG_BIAS`."""
    if mask.dtype == torch.bool:
        return torch.where(mask, 0.0, NEG_BIAS).to(dtype)
    return mask.to(dtype).clamp_min(NEG_BIAS)


def _mask_rows(attn_mask: Tensor | None, rows: Tensor, dtype: torch.dtype) -> Tensor | None:
    """Additive key bias `[B or 1, N]` of query row `rows[b]` of each example, from a
    `[B?, H?, Nq, Nk]` mask."""
    if attn_mask is None:
        return None
    mask = _mask3(attn_mask)
    return _as_bias(mask.gather(1, rows[:mask.shape[0], None, None].expand(-1, 1, mask.shape[2]))[:, 0], dtype)


def _last_rows(positions: Tensor, span: Span, real: Tensor) -> Tensor:
    return positions[None] == (positions[None] * real).amax(dim=1, keepdim=True)


def _cls_rows(positions: Tensor, span: Span, real: Tensor) -> Tensor:
    return positions[None] == 0


def _text_rows(positions: Tensor, span: Span, real: Tensor) -> Tensor:
    after = real & (positions >= span[1])
    outside = real & ((positions < span[0]) | (positions >= span[1]))
    return torch.where(after.any(dim=1, keepdim=True), after, outside)


# Which rows a query averages, per example (`[B or 1, N]` bool) from the token positions `[N]`,
# the span and the REAL tokens `[B, N]` (padding excluded): the last real token, the first
# (CLS), the real tokens after the span (else every real token outside it).
QUERY_ROWS: dict[str, Callable[[Tensor, Span, Tensor], Tensor]] = {
    "last": _last_rows,
    "cls": _cls_rows,
    "text": _text_rows,
}


def _probabilities(q: Tensor, k: Tensor, attn_mask: Tensor | None, is_causal: bool, scale: float | None) -> Tensor:
    """`[B, N, N]`: the attention probabilities of every query row, mean over heads (the block's
    mask and causality; grouped key heads expanded), in float32 at least."""
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    k = k.to(cd).repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q.to(cd) @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if attn_mask is not None:
        logits = logits + _as_bias(_mask3(attn_mask), cd)[:, None]
    if is_causal:
        n = q.shape[2]
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), -math.inf)
    return torch.softmax(logits, dim=-1).mean(dim=1)


def _raters(probabilities: Tensor, positions: Tensor, span: Span, real: Tensor) -> Tensor:
    b, n = probabilities.shape[0], probabilities.shape[-1]
    return rater_scores(probabilities, _text_rows(positions, span, real).expand(b, n), span)


# Queries whose rows each keep their own attention: `[B, N]` from the head-mean probabilities of
# every row `[B, N, N]`, the token positions `[N]`, the span and the real tokens `[B, N]`
# (SparseVLM's text raters).
PER_ROW_QUERIES: dict[str, Callable[[Tensor, Tensor, Span, Tensor], Tensor]] = {
    "raters": _raters,
}


def query_attention(q: Tensor, k: Tensor, attn_mask: Tensor | None, is_causal: bool, scale: float | None,
                    query: str, *, span: Span) -> Tensor:
    """`[B, N]`: attention each key receives from one query row (`QUERY_ROWS[query]`), per
    example: the real tokens are those the mask lets the last row attend (padded batches); a
    `PER_ROW_QUERIES` query from every row's own attention (SparseVLM's raters)."""
    b, n = q.shape[0], q.shape[2]
    positions = torch.arange(n, device=q.device)
    last_row = _mask_rows(attn_mask, torch.full((b,), n - 1, device=q.device), torch.float32)
    real = torch.ones(b, n, dtype=torch.bool, device=q.device) if last_row is None else (last_row > NEG_BIAS / 2).expand(b, n)
    if query in PER_ROW_QUERIES:
        return PER_ROW_QUERIES[query](_probabilities(q, k, attn_mask, is_causal, scale), positions, span, real).to(q.dtype)
    rows = QUERY_ROWS[query](positions, span, real).expand(b, n)
    weights = rows.to(q.dtype) / rows.sum(dim=1, keepdim=True).to(q.dtype)
    row = (q * weights[:, None, :, None]).sum(dim=2, keepdim=True)
    last = (positions[None] * rows).amax(dim=1)  # each example's last query row, [B]
    bias = _mask_rows(attn_mask, last, q.dtype)
    if bias is not None:
        bias = bias.expand(b, -1)
    return attention_from_query(row, k, scale=scale, query_positions=last[:, None] if is_causal else None, key_bias=bias)


def weights_attention(weights: Tensor, query: str, *, span: Span) -> Tensor:
    """`[B, N]`: attention each key receives from the query rows (`QUERY_ROWS[query]`, their
    mean) of the probabilities `weights [B, H, N, N]` an eager block computed, mean over heads;
    the real tokens are the keys the last row attends (padded batches)."""
    b, n = weights.shape[0], weights.shape[-1]
    received = weights.float().mean(dim=1)  # [B, Nq, Nk]
    real = received[:, -1, :] > 0
    if query in PER_ROW_QUERIES:
        return PER_ROW_QUERIES[query](received, torch.arange(n, device=weights.device), span, real).to(weights.dtype)
    rows = QUERY_ROWS[query](torch.arange(n, device=weights.device), span, real).expand(b, n).float()
    return ((received * (rows / rows.sum(dim=1, keepdim=True))[:, :, None]).sum(dim=1)).to(weights.dtype)


def mean_keys(k: Tensor) -> Tensor:
    """Keys averaged over heads: `[B, Hk, N, dh] -> [B, N, dh]` (ToMe's metric)."""
    return k.mean(dim=1)


def _in_span(x: Tensor, span: Span, scores: Tensor) -> Tensor:
    """`[B, N]`: `scores [B, |span|]` on the span, 0 elsewhere."""
    full = x.new_zeros(x.shape[0], x.shape[1])
    return torch.cat([full[:, :span[0]], scores.to(x.dtype), full[:, span[1]:]], dim=1)


def _similarity(x: Tensor, to: str | None, span: Span, features: Tensor | None) -> Tensor:
    if to == "text":
        b, n = x.shape[0], x.shape[1]
        text = _text_rows(torch.arange(n, device=x.device), span, torch.ones(1, n, dtype=torch.bool, device=x.device))
        return text_similarity(x, x, text.expand(b, n))
    feats = (x if features is None else features)[:, span[0]:span[1]]
    a_set = ~bipartite_destinations(span[1] - span[0], x.device, span[0])  # ToMe's set A: the sources
    return _in_span(x, span, bipartite_scores(feats, a_set))


def _position(x: Tensor, option: str | None, span: Span, features: Tensor | None) -> Tensor:
    side = grid_side(span)
    if side is None:
        raise ValueError(f"score `position` needs a square grid of reducible tokens, got {span[1] - span[0]}")
    return _in_span(x, span, pool_inputs((side, side), device=x.device)["scores"].expand(x.shape[0], -1))


def _random(x: Tensor, option: str | None, span: Span, features: Tensor | None) -> Tensor:
    return _in_span(x, span, random_order(span[1] - span[0], x.device).expand(x.shape[0], -1))


StreamKernel = Callable[[Tensor, str | None, Span, Tensor | None], Tensor]
STREAM_KERNELS: dict[str, StreamKernel] = {
    "norm": lambda x, option, span, features: hidden_norm(x),
    "similarity": _similarity,
    "position": _position,
    "random": _random,
}


def stream_score(x: Tensor, kind: str, option: str | None, *, span: Span, features: Tensor | None = None) -> Tensor:
    """`[B, N]` score `kind` (with its `option`) on the stream `x [B, N, D]` (`STREAM_KERNELS`)."""
    return STREAM_KERNELS[kind](x, option, span, features)
