"""The task protocol: how a search, a validation, a measurement and a study use a model on a
dataset, instead of calling it in one way of their own.

A `Task` gives batches (`train_batch(step, ...)`: a deterministic function of the step alone;
`eval_batch(size, split)`: the first examples of a split), reads a model's answer out of its
output (`logits`), scores it (`loss` for an objective; `correct` per example) and reports the
accuracy per family and overall. Two kinds of answer, one class each:
- `ClassifierTask` (`classify.py`): one logit row per example over the answers (the shipped
  model);
- `LanguageTask` (`language.py`): next-token logits over the vocabulary of a vision-language
  model, scored on the answer tokens (teacher-forced) or on the last prompt token.
Objectives (the space's `objective { task: ... }`): `cross_entropy` / `lm` the answer's
loss (teacher-forced for a language model; needs answers), `kl` the reduced model's answer
distributions against the dense model's, label-free.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
from torch import Tensor

from deos_dsl.data import Encoded, concat

ANSWER_LOSSES = ("cross_entropy", "lm")


class Source(ABC):
    """Where a task's examples come from: encoded batches by example index."""

    families: tuple[str, ...]

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def batch(self, indices: list[int]) -> Encoded: ...

    def answered(self) -> bool:
        """Whether every example has an answer (checked before an answer loss runs)."""
        return True

    def eval_batch(self, size: int, split: str) -> Encoded:
        """The first `size` examples (of `split` where the data has splits), at most all of them."""
        return self.batch(list(range(min(size, len(self)))))


class ExampleSource(Source):
    """A finite dataset (`examples`): training cycles through it in order, evaluation reads its
    first examples whatever the split."""

    def __init__(self, encoder: Any, answered: bool) -> None:
        self.encoder, self._answered, self.families = encoder, answered, encoder.families

    def __len__(self) -> int:
        return len(self.encoder)

    def batch(self, indices: list[int]) -> Encoded:
        return self.encoder.batch(indices)

    def answered(self) -> bool:
        return self._answered


class Task(ABC):
    """A model on a dataset (module docstring)."""

    def __init__(self, source: Source, name: str) -> None:
        self.source, self.name = source, name

    @property
    def families(self) -> tuple[str, ...]:
        return self.source.families

    def train_batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> Encoded:
        """Rank `rank`'s shard (`batch_size / world` examples) of global train batch `step`:
        examples `step * batch_size + ...`, cycling through the dataset."""
        share = batch_size // world
        start = step * batch_size + rank * share
        return self.source.batch([(start + i) % len(self.source) for i in range(share)])

    def eval_batch(self, size: int, split: str = "test") -> Encoded:
        """The first `size` examples (of `split` where the data has splits), at most all of them."""
        return self.source.eval_batch(size, split)

    @abstractmethod
    def logits(self, output: Any) -> Tensor:
        """The answer logits in a model's (or graph's) output."""

    @abstractmethod
    def loss(self, logits: Tensor, batch: Encoded, objective: str, reference: Tensor | None) -> Tensor:
        """The loss of `objective` (`reference`: the dense model's logits, for `kl`)."""

    @abstractmethod
    def correct(self, logits: Tensor, batch: Encoded) -> Tensor:
        """`[B]` bool: whether each example is answered right."""

    def check_objective(self, objective: str) -> str | None:
        """Why `objective` cannot run on this task's data (None: it can)."""
        if objective in ANSWER_LOSSES and not self.source.answered():
            return f"objective `{objective}` needs an answer on every example"
        return None

    def accuracy(self, correct: Tensor, batch: Encoded) -> dict[str, float]:
        """Accuracy (%) per family with examples, and `overall`."""
        hits = correct.float().cpu()
        family = batch.family.cpu()
        result = {name: 100.0 * hits[family == i].mean().item() for i, name in enumerate(self.families)
                  if bool((family == i).any())}
        result["overall"] = 100.0 * hits.mean().item()
        return result

    def evaluate(self, run: Callable[[Encoded], Any], batch: Encoded, device: torch.device, chunk: int,
                 fixed: bool = False) -> dict[str, float]:
        """Accuracy (%) per family and overall of `run` over `batch` (see `hits`)."""
        return self.accuracy(self.hits(run, batch, device, chunk, fixed), batch)

    @torch.no_grad()
    def hits(self, run: Callable[[Encoded], Any], batch: Encoded, device: torch.device, chunk: int,
             fixed: bool = False) -> Tensor:
        """`[len(batch)]` bool on the CPU: whether `run(batch rows)` (a model or graph call)
        answers each example right, `chunk` examples at a time; `fixed`: every call gets exactly
        `chunk` rows (the last chunk is padded with repeated rows, then dropped), for graphs
        traced at one batch size."""
        hits = []
        for lo in range(0, len(batch), chunk):
            rows = batch.rows(lo, lo + chunk)
            real = len(rows)
            if fixed and real < chunk:
                rows = concat([rows] + [batch.rows(0, 1)] * (chunk - real))
            rows = rows.to(device)
            hits.append(self.correct(self.logits(run(rows)), rows)[:real].cpu())
        return torch.cat(hits)
