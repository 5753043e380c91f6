"""The shipped model's encoding of a user dataset (its "processor"): what `deos data export
embedded` writes reads back into the batches the procedural benchmark makes.

An image is a 96x96 RGB file (`[3, 96, 96]` in [0, 1]); a prompt is the benchmark's question
words separated by spaces (left-padded to 12 tokens); an answer is one of its 14 answer words;
a family one of its five question families (else none). Anything else is a `DataError` naming
the line, found when the dataset is opened.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from deos_dsl.embedded.vqa import ANSWER_INDEX, ANSWERS, FAMILIES, IMAGE_SIZE, QUESTION_LEN, WORD_INDEX, encode_question
from deos_dsl.errors import DataError

from .encoded import Encoded
from .examples import HINT, MAX_REPORTED, Example


def _check(example: Example) -> str | None:
    """What makes `example` unusable for the shipped model, or None."""
    unknown = [word for word in example.prompt.split() if word not in WORD_INDEX]
    if unknown:
        return f"the shipped model does not know the word(s) {', '.join(f'`{w}`' for w in unknown[:5])}"
    if len(example.prompt.split()) > QUESTION_LEN:
        return f"the prompt has more than {QUESTION_LEN} words"
    if example.answer is not None and example.answer not in ANSWER_INDEX:
        return f"answer `{example.answer}` is not one of the shipped model's answers ({', '.join(ANSWERS)})"
    if len(example.images) != 1:
        return f"the shipped model takes one image per example, got {len(example.images)}"
    with Image.open(example.images[0]) as image:
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            return f"image {example.images[0].name} is {image.size[0]}x{image.size[1]}, the model takes {IMAGE_SIZE}x{IMAGE_SIZE}"
    return None


class VQAEncoder:
    """Batches of the shipped model (`args = (pixels, question)`, targets = answer ids) from
    `examples`, checked whole when made."""

    families = FAMILIES

    def __init__(self, examples: list[Example]) -> None:
        problems = [f"{ex.where}: {problem}" for ex in examples if (problem := _check(ex)) is not None]
        if problems:
            raise DataError(f"{len(problems)} example(s) the shipped model cannot take:\n"
                            + "\n".join(f"  {p}" for p in problems[:MAX_REPORTED]), HINT)
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices: list[int]) -> Encoded:
        chosen = [self.examples[i] for i in indices]
        pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(ex.images[0]).convert("RGB"), dtype=np.float32)
                                               .transpose(2, 0, 1) / 255.0) for ex in chosen])
        question = torch.tensor([encode_question(tuple(ex.prompt.split())) for ex in chosen])
        answer = torch.tensor([ANSWER_INDEX[ex.answer] if ex.answer is not None else -1 for ex in chosen])
        family = torch.tensor([FAMILIES.index(ex.family) if ex.family in FAMILIES else -1 for ex in chosen])
        return Encoded((pixels, question), {}, answer, family, families=FAMILIES)
