"""A batch ready for a model: its call arguments and what the task scores.

`args` / `kwargs` are the model's inputs (`model(*args, **kwargs)`); `targets` what its answer
is scored against: answer ids `[B]` for a classifier (the shipped model), next-token ids
`[B, L]` for a language model (`IGNORE` where no answer token follows); `positions [B, L]`
(language models) the logits rows a loss or an accuracy reads (the answer's, or the last
prompt token's when there is no answer); `family [B]` the index of each example's family in
the dataset's `families` (-1: none).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    args: tuple[Tensor, ...]
    kwargs: dict[str, Tensor]
    targets: Tensor
    family: Tensor
    positions: Tensor | None = None
    families: tuple[str, ...] = field(default=(), compare=False)

    def __len__(self) -> int:
        return int(self.family.shape[0])

    def _map(self, change: Callable[[Tensor], Tensor]) -> Encoded:
        return replace(self, args=tuple(change(a) for a in self.args),
                       kwargs={k: change(v) for k, v in self.kwargs.items()}, targets=change(self.targets),
                       family=change(self.family), positions=None if self.positions is None else change(self.positions))

    def to(self, device: torch.device | str) -> Encoded:
        return self._map(lambda t: t.to(device))

    def rows(self, lo: int, hi: int) -> Encoded:
        """Examples `lo..hi` (every tensor's first axis)."""
        return self._map(lambda t: t[lo:hi])


def concat(parts: list[Encoded]) -> Encoded:
    """One batch from batches of the same dataset."""
    first = parts[0]
    cat = lambda get: torch.cat([get(p) for p in parts])  # noqa: E731
    return replace(first, args=tuple(cat(lambda p, i=i: p.args[i]) for i in range(len(first.args))),
                   kwargs={k: cat(lambda p, k=k: p.kwargs[k]) for k in first.kwargs}, targets=cat(lambda p: p.targets),
                   family=cat(lambda p: p.family),
                   positions=None if first.positions is None else cat(lambda p: p.positions))
