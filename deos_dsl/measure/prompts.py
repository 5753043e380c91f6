"""A generative model and real prompts to measure it on: what the generation benchmarks share."""

from __future__ import annotations

from pathlib import Path

import torch

from deos_dsl.compiler import LoadedModel, resolve_model
from deos_dsl.data import prompt_batches, read_jsonl, shapes_vqa_example
from deos_dsl.search.ddp import pick_device


def model_and_prompts(model: str, device: str, sizes: list[int],
                      data: Path | None = None) -> tuple[LoadedModel, torch.device, dict[int, dict[str, torch.Tensor]]]:
    """The model `model` on `device` (`auto` / `cpu` / `cuda`), and for each `B` in `sizes` the
    processor's inputs of the first `B` prompts of the JSONL `data` (default: the shipped
    benchmark's test split), right-padded, on that device."""
    chosen = pick_device(device)
    loaded = resolve_model(model)
    loaded.model.to(chosen)
    count = max(sizes)
    examples = read_jsonl(data, count) if data else [shapes_vqa_example("test", index) for index in range(count)]
    batches = prompt_batches(loaded.processor, examples, sizes)
    return loaded, chosen, {size: {name: value.to(chosen) for name, value in batch.items()} for size, batch in batches.items()}
