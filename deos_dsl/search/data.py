"""The `--data` spec of a search: the examples that train the operator parameters and validate them.

Specs: `embedded`, `embedded:shapes_vqa` or `embedded:shapes_vqa[:N]`: the shipped procedural
benchmark (`deos_dsl.embedded.vqa`). The search trains on the TRAIN split: global batch `s`
holds train examples `s * B ... s * B + B - 1` (taken modulo `N` with `[:N]`, else fresh
examples every step), so a step's data depends on the step alone (resume is exact); rank `r`
of `W` data-parallel processes takes the `r`-th contiguous `B / W` of it. Validation uses the
first examples of the VAL split. The model must take `(pixels [B, 3, 96, 96] float, question
[B, 12] long)` and answer with logits `[B, 14]` (`check_model`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import torch

from deos_dsl.compiler.models import LoadedModel
from deos_dsl.embedded.vqa import ANSWERS, IMAGE_SIZE, QUESTION_LEN, Batch, VQADataset, fixed_eval_batch
from deos_dsl.errors import SearchError

SPEC = re.compile(r"embedded(?::shapes_vqa(?:\[:(\d+)\])?)?\Z")
FORMS = "`embedded`, `embedded:shapes_vqa` or `embedded:shapes_vqa[:N]`"


def concat(parts: list[Batch]) -> Batch:
    """One batch from consecutive batches."""
    return Batch(*(torch.cat([getattr(part, f.name) for part in parts]) for f in fields(Batch)))


@dataclass(frozen=True)
class DataSpec:
    """A parsed `--data`: `limit` is N of `[:N]` (train examples cycled through), or None."""

    text: str
    limit: int | None = None

    def train_batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> Batch:
        """Rank `rank`'s shard (`batch_size / world` examples) of global train batch `step`."""
        share = batch_size // world
        start, parts = step * batch_size + rank * share, []
        remaining = share
        while remaining:
            first = start if self.limit is None else start % self.limit
            take = remaining if self.limit is None else min(remaining, self.limit - first)
            parts.append(VQADataset("train", take, start=first).batch())
            start, remaining = start + take, remaining - take
        return concat(parts)

    @staticmethod
    def validation(size: int) -> Batch:
        """The first `size` examples of the validation split."""
        return fixed_eval_batch("val", size)


def parse_data(text: str) -> DataSpec:
    """Parse a `--data` spec; raises `SearchError` for anything else."""
    match = SPEC.match(text)
    if match is None:
        raise SearchError(f"unknown data `{text}`", f"use {FORMS} (the shipped shapes-VQA benchmark)")
    limit = int(match.group(1)) if match.group(1) else None
    if limit == 0:
        raise SearchError(f"data `{text}` selects no example", "N in `[:N]` must be positive")
    return DataSpec(text, limit)


def check_model(spec: DataSpec, loaded: LoadedModel) -> None:
    """Raise `SearchError` unless `loaded` answers shapes-VQA batches (module docstring)."""
    hint = f"data `{spec.text}` needs `--model embedded` (or a model with the same inputs and answers)"
    args = loaded.args
    fits = (not loaded.kwargs and len(args) == 2 and all(isinstance(a, torch.Tensor) for a in args)
            and args[0].is_floating_point() and tuple(args[0].shape[1:]) == (3, IMAGE_SIZE, IMAGE_SIZE)
            and not args[1].is_floating_point() and tuple(args[1].shape[1:]) == (QUESTION_LEN,))
    if not fits:
        raise SearchError(f"model `{loaded.name}` does not take shapes-VQA inputs (pixels [B, 3, {IMAGE_SIZE}, "
                          f"{IMAGE_SIZE}], question [B, {QUESTION_LEN}])", hint)
    with torch.no_grad():
        out = loaded.model(*args)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (args[0].shape[0], len(ANSWERS)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SearchError(f"model `{loaded.name}` answers with {shape}, not logits over the {len(ANSWERS)} "
                          "shapes-VQA answers", hint)
