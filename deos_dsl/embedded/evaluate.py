"""Accuracy per question family, majority baseline and the random-token-drop sanity check."""

from __future__ import annotations

import math

import torch

from . import vqa
from .model import EmbeddedVQAModel


def random_keep_index(batch_size: int, n_visual: int, keep_ratio: float,
                      generator: torch.Generator) -> torch.Tensor:
    """Per-example random visual-token indices ``[B, ceil(keep_ratio * n_visual)]``, sorted."""
    k = math.ceil(keep_ratio * n_visual)
    scores = torch.rand(batch_size, n_visual, generator=generator)
    return scores.topk(k, dim=1).indices.sort(dim=1).values


@torch.no_grad()
def predict(model: EmbeddedVQAModel, batch: vqa.Batch, keep_ratio: float = 1.0, seed: int = 0,
            chunk: int = 250) -> torch.Tensor:
    """Predicted answer ids ``[B]``.  With ``keep_ratio < 1`` a random subset of the visual tokens
    (and their positions) is kept between the projector and the decoder, per example."""
    generator = torch.Generator().manual_seed(seed)
    preds = []
    for lo in range(0, len(batch.answer), chunk):
        pixels, question = batch.pixels[lo:lo + chunk], batch.question[lo:lo + chunk]
        visual = model.visual_tokens(pixels)
        index = None
        if keep_ratio < 1.0:
            index = random_keep_index(visual.shape[0], visual.shape[1], keep_ratio, generator)
            visual = visual.gather(1, index[..., None].expand(-1, -1, visual.shape[2]))
        preds.append(model.answer(model.decoder.embed(visual, question, index)).argmax(-1))
    return torch.cat(preds)


def accuracy_per_family(preds: torch.Tensor, batch: vqa.Batch) -> dict[str, float]:
    """Accuracy in percent per family of ``vqa.FAMILIES`` plus ``"overall"``."""
    correct = (preds == batch.answer).float()
    result = {f: 100.0 * correct[batch.family == i].mean().item() for i, f in enumerate(vqa.FAMILIES)}
    result["overall"] = 100.0 * correct.mean().item()
    return result


def majority_baseline(batch: vqa.Batch) -> dict[str, float]:
    """Accuracy of answering each family's most frequent answer (on ``batch`` itself)."""
    preds = torch.empty_like(batch.answer)
    for i in range(len(vqa.FAMILIES)):
        mask = batch.family == i
        preds[mask] = batch.answer[mask].mode().values
    return accuracy_per_family(preds, batch)


def evaluate(model: EmbeddedVQAModel, batch: vqa.Batch, keep_ratio: float = 1.0,
             seed: int = 0) -> dict[str, float]:
    """Per-family accuracy (percent) of ``model`` on ``batch``; see :func:`predict`."""
    return accuracy_per_family(predict(model, batch, keep_ratio, seed), batch)


def format_accuracy(acc: dict[str, float]) -> str:
    """One line ``family=xx.x ...``."""
    return " ".join(f"{k}={v:.1f}" for k, v in acc.items())
