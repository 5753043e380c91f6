"""Importance scores `[B, N]` (higher = keep) that work with fused attention kernels.

Attention-based scores never need the block's attention matrix: the caller recomputes the
few query rows it needs (last token, CLS, or the text tokens) from the block's q projection
and passes them with the block's keys; one softmax row per query is computed here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from deos_dsl.ops.affinity import unit_rows


def attention_from_query(
    q: Tensor,
    k: Tensor,
    *,
    scale: float | None = None,
    query_positions: Tensor | None = None,
    key_bias: Tensor | None = None,
) -> Tensor:
    """Mean attention probability each key receives from the given query rows.

    q `[B, H, Q, dh]`; k `[B, Hk, N, dh]` with `H % Hk == 0` (grouped-query attention is
    expanded); scale defaults to `dh ** -0.5`; query_positions `[Q]` (or `[B, Q]`) turns on
    causal masking (query at position p sees keys `<= p`); key_bias `[B, N]` is added to the
    logits (e.g. proportional attention).  Softmax over keys in float32 (float64 stays
    float64), mean over heads and query rows.  Returns `[B, N]`; each row sums to 1.
    """
    b, h, _, dh = q.shape
    if h % k.shape[1]:
        raise ValueError(f"{h} query heads are not a multiple of {k.shape[1]} key heads")
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    k = k.to(cd).repeat_interleave(h // k.shape[1], dim=1)
    logits = (q.to(cd) @ k.transpose(-1, -2)) * (dh ** -0.5 if scale is None else scale)
    if key_bias is not None:
        logits = logits + key_bias.to(cd)[:, None, None, :]
    if query_positions is not None:
        qp = query_positions if query_positions.dim() == 2 else query_positions[None]
        future = torch.arange(k.shape[2], device=k.device) > qp[..., None]  # [B or 1, Q, N]
        logits = logits.masked_fill(future[:, None], -math.inf)
    return torch.softmax(logits, dim=-1).mean(dim=(1, 2))


def rater_scores(probabilities: Tensor, text: Tensor, span: tuple[int, int]) -> Tensor:
    """SparseVLM's text raters: of the `text [B, Nq]` query rows of the attention
    `probabilities [B, Nq, Nk]` (head-mean), the raters are those whose relevance to the visual
    keys `span` (their mean probability there) is at least the mean relevance of the text rows;
    each key scores the mean probability the raters give it. Returns `[B, Nk]`."""
    rows = text.to(probabilities.dtype)
    relevance = probabilities[:, :, span[0]:span[1]].mean(dim=-1)  # [B, Nq]
    mean = (relevance * rows).sum(dim=1, keepdim=True) / rows.sum(dim=1, keepdim=True).clamp_min(1.0)
    raters = rows * (relevance >= mean).to(rows.dtype)
    weights = raters / raters.sum(dim=1, keepdim=True).clamp_min(1.0)
    return (probabilities * weights[:, :, None]).sum(dim=1)


def hidden_norm(x: Tensor) -> Tensor:
    """L2 norm of each hidden state: `[B, N, D] -> [B, N]`."""
    return x.norm(dim=-1)


HASH_MULTIPLIER, HASH_MASK = 0x45D9F3B, 0xFFFFFFFF  # a 32-bit integer mixing hash


def random_order(n: int, device: torch.device | str = "cpu") -> Tensor:
    """`[n]` float scores in [0, 1) that rank the positions `0..n-1` in a fixed pseudo-random
    order (a 32-bit mixing hash of the position: the same order for every example and call, no
    generator state): the `random` keep baseline."""
    h = torch.arange(n, device=device, dtype=torch.int64) + 1
    for _ in range(2):
        h = ((h >> 16) ^ h) * HASH_MULTIPLIER & HASH_MASK
    h = (h >> 16) ^ h
    return h.to(torch.float64) / (HASH_MASK + 1)


def text_similarity(x: Tensor, text: Tensor, text_mask: Tensor | None = None) -> Tensor:
    """Cosine similarity of each token `x [B, N, D]` to the mean of the text tokens
    `text [B, T, D]` (only where `text_mask [B, T]` is True).  Returns `[B, N]`."""
    if text_mask is None:
        mean = text.mean(dim=1)
    else:
        w = text_mask.to(text.dtype)[..., None]
        mean = (text * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
    return (unit_rows(x) * unit_rows(mean)[:, None, :]).sum(-1)


def bipartite_scores(features: Tensor, a_set: Tensor) -> Tensor:
    """ToMe bipartite matching as scores `[B, n]` for the unified operator.

    features `[B, n, d]`, a_set `[n]` bool (True: set A, the tokens that may be merged; the
    others form set B, the merge destinations).  A token of A scores `-max_{i in B} cos`, so
    the most redundant A tokens rank lowest; B tokens score 2 (> any A score, never dropped).
    """
    unit = unit_rows(features)
    # masked instead of indexed (no nonzero): static shapes, so it traces and fake-propagates
    pairs = a_set[:, None] & ~a_set[None, :]
    best = (unit @ unit.transpose(-1, -2)).masked_fill(~pairs, -math.inf).amax(dim=-1)
    has_b = (~a_set).any()
    return torch.where(a_set & has_b, -best, torch.full_like(best, 2.0))


class LearnedScorer(nn.Module):
    """Small learned importance scorer: `LayerNorm(D) -> Linear(D, 1)`, `[B, N, D] -> [B, N]`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(x)).squeeze(-1)
