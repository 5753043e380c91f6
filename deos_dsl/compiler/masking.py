"""Attention-mask arithmetic for relaxed sites (call_function targets inside compiled graphs).

A relaxed site hides tokens from later attention with an additive key bias `[B, N]`; it is
composed with whatever the attention already had:
`mask = base + bias[:, None, None, :]`, `base` = the causal mask (`0` on and below the
diagonal, `-inf` above, top-left aligned exactly as `is_causal=True`) when the node was
causal, the existing boolean mask as `0 / -inf`, an existing float mask as is, or 0.
The rewritten node then runs with `is_causal=False`; with `bias == 0` it computes the same
attention as before. Attention written as matmul + softmax gets the bias added to its logits
(`key_logits`), after whatever mask, scale and soft-capping it applied.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def key_mask(bias: Tensor, query: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
    """Float mask `[B, 1 | H, Nq, Nk]` = the node's own mask (or causal) + key `bias [B, Nk]`."""
    n_q, n_k = query.shape[-2], bias.shape[-1]
    keys = bias.to(query.dtype)[:, None, None, :]
    if is_causal:
        visible = torch.ones(n_q, n_k, dtype=torch.bool, device=query.device).tril()
        return torch.where(visible, 0.0, -math.inf).to(query.dtype) + keys
    if attn_mask is None:
        return keys.expand(-1, -1, n_q, -1)
    if attn_mask.dtype == torch.bool:
        return torch.where(attn_mask, 0.0, -math.inf).to(query.dtype) + keys
    return attn_mask.to(query.dtype) + keys


def key_logits(logits: Tensor, bias: Tensor) -> Tensor:
    """Eager attention logits `[B, H, Nq, Nk]` plus the key `bias [B, Nk]` (what `key_mask`
    adds to a fused kernel's mask, added before the block's own softmax)."""
    return logits + bias.to(logits.dtype)[:, None, None, :]


def span_tokens(values: Tensor, start: int, end: int) -> Tensor:
    """The tokens `[start, end)` of per-token `values [B, N]`: a site's reducible span, carried
    across the projector (a vision site's mask / sizes / bias without the encoder's CLS)."""
    return values[:, start:end]


def place_tokens(values: Tensor, stream: Tensor, start: int, fill: float) -> Tensor:
    """Per-token `values [B, n]` placed at `[start, start + n)` of `stream [B, N, D]`'s tokens,
    `fill` elsewhere: carries a projector (or vision) site's mask / sizes / bias into the decoder stream."""
    b, n = values.shape
    before = values.new_full((b, start), fill)
    after = values.new_full((b, stream.shape[1] - start - n), fill)
    return torch.cat([before, values, after], dim=1)


def gather_mask(mask: Tensor, kept_idx: Tensor) -> Tensor:
    """A `[B | 1, H | 1, N, N]` attention mask restricted to the kept tokens on BOTH token axes:
    `[B, H | 1, N', N']` (`kept_idx [B, N']` original positions, in order, so causal stays causal)."""
    b, n_kept = kept_idx.shape
    full = mask.expand(b, *mask.shape[1:])
    heads, n = full.shape[1], full.shape[-1]
    rows = full.gather(2, kept_idx[:, None, :, None].expand(b, heads, n_kept, n))
    return rows.gather(3, kept_idx[:, None, None, :].expand(b, heads, n_kept, n_kept))
