"""Training-only auxiliary targets and heads for :mod:`deos_dsl.embedded.train`.

A from-scratch model trained on the answer loss alone sits at the per-family answer prior for
thousands of steps (measured here: no progress in 1000 steps).  These dense targets, generated
with each training example, give every stage of the model its own signal; the heads are not
part of the shipped model.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import vqa
from .model import EmbeddedVQAModel


class TrainItems(torch.utils.data.Dataset):
    """Train-split items plus auxiliary targets: patch labels ``[144]``, class histogram ``[24]``."""

    def __init__(self, size: int, seed: int) -> None:
        self.data = vqa.VQADataset("train", size, seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple:
        ex = self.data.example(i)
        return (*vqa.example_tensors(ex), torch.from_numpy(vqa.patch_labels(ex)),
                torch.from_numpy(vqa.class_histogram(ex)))


class AuxiliaryHeads(torch.nn.Module):
    """Training-only heads that break the answer-loss plateau of a from-scratch model:
    per-patch object labels from the encoder output (like a pre-trained LLaVA encoder, the
    encoder learns to see objects), the bag of question words from the LAST token after decoder
    layer 0 (the first hop gathers the question) and the scene's class histogram from the LAST
    token after decoder layer 1 (the second hop reads the image); later layers answer."""

    def __init__(self, model: EmbeddedVQAModel) -> None:
        super().__init__()
        cfg = model.config
        self.patch = torch.nn.Linear(cfg.vision_dim, vqa.PART_CLASS + 1)
        self.words = torch.nn.Linear(cfg.decoder_dim, cfg.vocab_size)
        self.scene = torch.nn.Linear(cfg.decoder_dim, vqa.N_OBJECT_CLASSES)
        self.captured: dict[str, torch.Tensor] = {}
        model.vision.register_forward_hook(self._capture("vision"))
        model.decoder.layers[0].register_forward_hook(self._capture("decoder0"))
        model.decoder.layers[1].register_forward_hook(self._capture("decoder1"))

    def _capture(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.captured[name] = output
        return hook

    def losses(self, question: torch.Tensor, labels: torch.Tensor,
               histogram: torch.Tensor) -> dict[str, torch.Tensor]:
        """After a model forward: patch-label cross-entropy (``labels [B, 144]``), question
        bag-of-words binary cross-entropy (``question [B, T]``) and class-histogram squared
        error (``histogram [B, 24]``)."""
        patch_logits = self.patch(self.captured["vision"][:, 1:])
        words = F.one_hot(question, self.words.out_features).amax(dim=1).float()
        return {
            "patch": F.cross_entropy(patch_logits.flatten(0, 1), labels.flatten()),
            "words": F.binary_cross_entropy_with_logits(self.words(self.captured["decoder0"][:, -1]), words),
            "scene": F.mse_loss(self.scene(self.captured["decoder1"][:, -1]), histogram),
        }
