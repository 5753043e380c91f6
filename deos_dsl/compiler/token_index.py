"""Token-index arithmetic inside emitted graphs (call_function targets of `passes/discretise.py`).

A hard site's `kept_idx [B, N']` gives every surviving token's position in the stream entering
the site (`-1`: no original token). Downstream (`deos_dsl.compiler.token_flow`), the tokens cross
slices and concatenations; these helpers carry the index along, so every carrier has, per token,
its position in the carrier's own coordinates BEFORE the site, and gather side tensors with it;
`join_values` carries the site's per-token sizes and biases the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deos_dsl.ops import gather_tokens


def slice_index(index: Tensor, start: int, stop: int | None) -> Tensor:
    """`index [B, N']` of a carrier sliced to `[start, stop)` (`start` before the reduced span,
    `stop` None or counted from the end): positions shift by `-start`, `-1` stays."""
    part = index[:, start:stop]
    return torch.where(part >= 0, part - start, part)


def join_index(pieces: list[Tensor], index: Tensor, position: int, axis: int, removed: int) -> Tensor:
    """The index `[B, sum n_i]` of `cat(pieces, axis)`: piece `position` holds the reduced tokens
    (`index`, `removed` tokens fewer than before the site), the others are protected tokens at
    their own positions."""
    parts, offset = [], 0
    for i, piece in enumerate(pieces):
        n = piece.shape[axis]
        if i == position:
            parts.append(torch.where(index >= 0, index + offset, index))
            n += removed
        else:
            parts.append(torch.arange(offset, offset + n, device=index.device).expand(index.shape[0], n))
        offset += n
    return torch.cat(parts, dim=1)


def join_values(pieces: list[Tensor], values: Tensor, position: int, axis: int, fill: float) -> Tensor:
    """Per-token `values [B, n]` of piece `position` (sizes, biases) placed in `cat(pieces, axis)`:
    `[B, sum n_i]`, `fill` on the other pieces' tokens."""
    parts = [values if i == position else values.new_full((values.shape[0], piece.shape[axis]), fill)
             for i, piece in enumerate(pieces)]
    return torch.cat(parts, dim=1)


def gather_side(side: Tensor, index: Tensor, axis: int, ndim: int) -> Tensor:
    """`side` broadcast to `ndim` dims (`[1 | B, ..., N, ...]`, `N` on `axis >= 1`), gathered on
    `axis` with `index [B, N']`: `[B, ..., N', ...]` (zeros where the index is `-1`)."""
    full = side.reshape((1,) * (ndim - side.ndim) + tuple(side.shape))
    return gather_tokens(full.movedim(axis, 1), index).movedim(1, axis)
