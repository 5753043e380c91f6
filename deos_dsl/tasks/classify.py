"""The shipped model's task: one logit row per example over the 14 shapes-VQA answers.

Its data is the procedural benchmark (`ProceduralSource`: `--data embedded`; training reads
fresh TRAIN examples every step, or cycles through the first N with `embedded:shapes_vqa[:N]`; only
some question families with `embedded{count,compare}`;
evaluation the first examples of VAL or TEST) or a dataset in the JSONL form through the
model's own encoding (`deos_dsl.data.VQAEncoder`, e.g. what `deos data export embedded` wrote).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from deos_dsl.data import Encoded
from deos_dsl.embedded.vqa import FAMILIES, example_tensors, family_indices, fixed_eval_batch, make_example
from deos_dsl.embedded.vqa import Batch as VQABatch

from .base import ANSWER_LOSSES, Source, Task


def encoded(batch: VQABatch) -> Encoded:
    return Encoded((batch.pixels, batch.question), {}, batch.answer, batch.family, families=FAMILIES)


class ProceduralSource(Source):
    """The procedural benchmark: TRAIN examples by index (cycling through the first `limit`
    when given), evaluation from the VAL or TEST split; only the examples of `only` (family
    names) when given (`family_indices`)."""

    families = FAMILIES

    def __init__(self, limit: int | None = None, only: tuple[str, ...] | None = None) -> None:
        self.limit, self.only = limit, only

    def __len__(self) -> int:
        return self.limit or 2**62  # unbounded: fresh examples every step

    def _examples(self, split: str, positions: list[int]) -> Encoded:
        items = [example_tensors(make_example(split, i)) for i in family_indices(positions, self.only)]
        pixels, question, answer, family = zip(*items)
        return encoded(VQABatch(torch.stack(pixels), torch.stack(question), torch.tensor(answer), torch.tensor(family)))

    def batch(self, indices: list[int]) -> Encoded:
        return self._examples("train", indices)

    def eval_batch(self, size: int, split: str) -> Encoded:
        return encoded(fixed_eval_batch(split, size)) if self.only is None else self._examples(split, list(range(size)))


class ClassifierTask(Task):
    """Logits `[B, A]`; the answer loss is the cross-entropy, `kl` the answer distributions'."""

    def logits(self, output: Any) -> Tensor:
        return output[0] if isinstance(output, tuple) else output

    def loss(self, logits: Tensor, batch: Encoded, objective: str, reference: Tensor | None) -> Tensor:
        if objective in ANSWER_LOSSES:
            return F.cross_entropy(logits.float(), batch.targets)
        assert reference is not None
        return F.kl_div(F.log_softmax(logits.float(), -1), F.log_softmax(reference.float(), -1), log_target=True,
                        reduction="batchmean")

    def correct(self, logits: Tensor, batch: Encoded) -> Tensor:
        return logits.argmax(-1) == batch.targets
