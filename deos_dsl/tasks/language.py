"""A vision-language model's task: next-token logits `[B, L, V]`, scored where the answer is.

The batch's `positions [B, L]` are the logits rows that predict the answer's tokens (teacher
forcing: row t predicts token t + 1), or, for an example without an answer, its last prompt
row. The answer loss (`cross_entropy` / `lm`) is the mean cross-entropy of the answer tokens;
`kl` is the KL divergence of the reduced model's next-token distributions from the dense
model's on the same rows (label-free); an example is correct when the argmax of every answer
row is its answer token (exact match under teacher forcing; generation is the deployment's).

An emitted model returns FEWER rows (its tokens really go): every reduced token lies in the
image span, before every scored row, so the scored rows keep their order and move up by the
number of tokens removed (`aligned`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor

from deos_dsl.data import IGNORE, ChatEncoder, Encoded, shapes_vqa_example
from deos_dsl.embedded.vqa import FAMILIES, SPLITS, family_indices

from .base import ANSWER_LOSSES, Source, Task

PROBE = 100  # examples of each split whose longest sets a procedural batch's length
SLACK = 4  # tokens of padding beyond it


class ProceduralChatSource(Source):
    """The procedural benchmark through a model's processor (`--data embedded` on a checkpoint):
    TRAIN examples by index (cycling through the first `limit` when given), evaluation the first
    examples of VAL or TEST; images in memory, nothing written. Every batch is padded to one
    length (the longest of the first `PROBE` examples of every split plus `SLACK`; a longer
    example is refused by name), so a search sees one sequence length. Only the examples of `only`
    (family names) when given (`family_indices`)."""

    families = FAMILIES

    def __init__(self, processor: Any, limit: int | None = None,
                 prelude: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 only: tuple[str, ...] | None = None) -> None:
        self.processor, self.limit, self.prelude, self.only = processor, limit, prelude, only
        probe = [shapes_vqa_example(split, index) for split in SPLITS for index in range(PROBE)]
        self.length = ChatEncoder(processor, probe).length + SLACK

    def __len__(self) -> int:
        return self.limit or 2**62  # unbounded: fresh examples every step

    def _encode(self, split: str, positions: list[int]) -> Encoded:
        examples = [shapes_vqa_example(split, i) for i in family_indices(positions, self.only)]
        encoder = ChatEncoder(self.processor, examples, self.length, FAMILIES, self.prelude)
        return encoder.batch(list(range(len(positions))))

    def batch(self, indices: list[int]) -> Encoded:
        return self._encode("train", indices)

    def eval_batch(self, size: int, split: str) -> Encoded:
        return self._encode(split, list(range(size)))


def aligned(logits: Tensor, batch: Encoded) -> tuple[Tensor, Tensor]:
    """`(targets, positions)` of `batch` for `logits` of `L' <= L` rows (module docstring)."""
    assert batch.positions is not None
    removed = batch.targets.shape[1] - logits.shape[1]
    if removed == 0:
        return batch.targets, batch.positions
    if removed < 0 or bool(batch.positions[:, :removed].any()):
        raise ValueError(f"logits of {logits.shape[1]} rows do not align with a batch of {batch.targets.shape[1]}")
    return batch.targets[:, removed:], batch.positions[:, removed:]


class LanguageTask(Task):
    """Next-token logits of a processor's model on a dataset (module docstring)."""

    def logits(self, output: Any) -> Tensor:
        if isinstance(output, Tensor):
            return output
        if isinstance(output, dict) or hasattr(output, "logits"):
            return output["logits"]
        return output[0]

    def loss(self, logits: Tensor, batch: Encoded, objective: str, reference: Tensor | None) -> Tensor:
        targets, positions = aligned(logits, batch)
        rows = logits.float()[positions]  # [R, V]
        if objective in ANSWER_LOSSES:
            return F.cross_entropy(rows, targets[positions])
        assert reference is not None
        _, reference_positions = aligned(reference, batch)
        return F.kl_div(F.log_softmax(rows, -1), F.log_softmax(reference.float()[reference_positions], -1),
                        log_target=True, reduction="batchmean")

    def correct(self, logits: Tensor, batch: Encoded) -> Tensor:
        targets, _ = aligned(logits, batch)
        answer = targets != IGNORE
        right = (logits.argmax(-1) == targets) | ~answer
        return right.all(dim=1) & answer.any(dim=1)
