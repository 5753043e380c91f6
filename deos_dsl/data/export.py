"""The shipped benchmark written out as a user dataset: `data.jsonl` and its images as PNG.

`deos data export embedded --split test --limit N --out DIR` writes the first N examples of
a split of shapes-VQA (`deos_dsl.embedded.vqa`) in the JSONL form of `examples.py` (prompt =
the question's words, answer = its answer word, family = its question family), so that the
generic data path runs on the shipped data. The directory is written whole or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from deos_dsl.embedded.vqa import SPLITS, make_example, render
from deos_dsl.errors import DataError
from deos_dsl.files import write_directory_atomically

from .examples import Example

JSONL = "data.jsonl"


def shapes_vqa_example(split: str, index: int, seed: int = 0) -> Example:
    """Example `index` of `split` of the procedural benchmark, its image in memory (8-bit RGB)."""
    example = make_example(split, index, seed)
    image = Image.fromarray((render(example).transpose(1, 2, 0) * 255).round().astype(np.uint8))
    return Example((image,), " ".join(example.question), example.answer, example.family, index, f"shapes-vqa/{split}")


def export_embedded(split: str, limit: int, out: Path, seed: int = 0) -> Path:
    """Write `limit` examples of `split` into the new directory `out`; returns its JSONL path."""
    if split not in SPLITS:
        raise DataError(f"unknown split `{split}`", f"use one of {', '.join(SPLITS)}")
    if limit < 1:
        raise DataError(f"--limit must be positive, got {limit}", "export at least one example")
    if out.exists():
        raise DataError(f"{out} already exists", "choose a new --out or remove it")

    def fill(temp: Path) -> None:
        (temp / "images").mkdir()
        lines = []
        for index in range(limit):
            example = shapes_vqa_example(split, index, seed)
            name = f"images/{split}-{index:06d}.png"
            example.images[0].save(temp / name)
            lines.append(json.dumps({"image": name, "prompt": example.prompt, "answer": example.answer,
                                     "family": example.family}))
        (temp / JSONL).write_text("\n".join(lines) + "\n", encoding="utf-8")

    write_directory_atomically(out, fill)
    return out / JSONL
