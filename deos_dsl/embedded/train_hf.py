"""Train the shipped HF LLaVA (`llava.py`) on shapes-VQA and write it with its processor.

    python -m deos_dsl.embedded.train_hf --seed 0      # writes deos_dsl/embedded/llava/

From scratch, on fresh TRAIN examples every step (`torch.set_num_threads(2)`, one data worker),
AdamW with linear warm-up and cosine decay, gradient clipping. Forward and backward run under
bfloat16 autocast by default (`--precision bfloat16`; weights, optimiser state and losses stay
float32): 1.45x faster per step than float32 on these CPUs (AVX512-BF16), measured at batch 16. The loss is the cross-entropy of
the answer word and of the `</s>` after it under teacher forcing (generation stops by itself)
plus training-only auxiliary targets, each giving one stage of the model its own signal (heads
not shipped):

- `patch`: every patch token of the vision tower's last layer predicts its object label (as a
  pre-trained tower sees objects);
- `cls`: the tower's CLS token predicts the scene's class histogram (so CLS attention ranks the
  patches that hold objects: EViT and VisionZip rank tokens by it);
- `words`, `scene`: the last prompt token after language-model layers 0 and 1 predicts the
  question's bag of words, then the scene histogram (the first hops read the question, then
  the image);
- `relation`: for spatial-relation questions, the last prompt token after layer 3 predicts the
  layout row and column of both objects the question names (locating them is what the answer
  needs; the old embedded model never learned this family).

Writes the model (safetensors, float32) and processor with `save_pretrained`, and `training.json`
(configuration, seed, steps, time, accuracy per family on the first 1000 TEST examples: dense,
with a random 25% of the visual tokens, CLS-ranked and random 50%).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deos_dsl.files import write_directory_atomically

from . import vqa
from .auxiliary import TrainItems
from .evaluate import format_accuracy, majority_baseline
from .llava import TOKEN, VOCABULARY, build_model, build_processor, pixel_values, training_inputs
from .llava_eval import accuracy
from .loading import LLAVA_DIRECTORY
from .train import log_step, lr_at, optimise, single_thread_worker, validate

RELATION_LAYER = 3


class Items(TrainItems):
    """Train examples as words, with their auxiliary targets."""

    def __getitem__(self, i: int) -> tuple:
        ex = self.data.example(i)
        pixels = torch.from_numpy(vqa.render(ex))
        relation = torch.full((4,), -100, dtype=torch.long)
        if ex.family == "relation":
            a, b = (ex.objects[j] for j in ex.relevant)
            relation = torch.tensor([a.row, a.col, b.row, b.col])
        return (pixels, ex.question, ex.answer, torch.from_numpy(vqa.patch_labels(ex)),
                torch.from_numpy(vqa.class_histogram(ex)), relation)


def collate(items: list[tuple]) -> dict[str, Tensor]:
    pixels, questions, answers, labels, histogram, relation = zip(*items)
    ids, mask, last = training_inputs(list(questions), list(answers))
    return {"pixel_values": pixel_values(torch.stack(pixels)), "input_ids": ids, "attention_mask": mask, "last": last,
            "answer": torch.tensor([TOKEN[a] for a in answers]), "labels": torch.stack(labels),
            "histogram": torch.stack(histogram), "relation": torch.stack(relation)}


class Auxiliary(nn.Module):
    """The training-only heads (module docstring)."""

    def __init__(self, vision: int, text: int) -> None:
        super().__init__()
        self.patch = nn.Linear(vision, vqa.PART_CLASS + 1)
        self.cls = nn.Linear(vision, vqa.N_OBJECT_CLASSES)
        self.words = nn.Linear(text, len(VOCABULARY))
        self.scene = nn.Linear(text, vqa.N_OBJECT_CLASSES)
        self.relation = nn.Linear(text, 4 * vqa.LAYOUT)

    def losses(self, tower: Tensor, hidden: tuple[Tensor, ...], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        rows = torch.arange(len(batch["last"]))
        at = lambda layer: hidden[layer + 1][rows, batch["last"]]  # noqa: E731  (after LM layer `layer`)
        prompt = torch.arange(batch["input_ids"].shape[1]) <= batch["last"][:, None]  # the question, not the answer
        words = torch.zeros(len(rows), len(VOCABULARY)).scatter_(1, batch["input_ids"] * prompt, 1.0)
        relation = self.relation(at(RELATION_LAYER)).view(-1, 4, vqa.LAYOUT)
        return {
            "patch": F.cross_entropy(self.patch(tower[:, 1:]).flatten(0, 1), batch["labels"].flatten()),
            "cls": F.mse_loss(self.cls(tower[:, 0]), batch["histogram"]),
            "words": F.binary_cross_entropy_with_logits(self.words(at(0)), words),
            "scene": F.mse_loss(self.scene(at(1)), batch["histogram"]),
            "relation": F.cross_entropy(relation.flatten(0, 1), batch["relation"].flatten(), ignore_index=-100)
            if bool((batch["relation"] >= 0).any()) else torch.zeros(()),
        }


PRECISIONS = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def train(out: Path, seed: int, steps: int, batch_size: int, lr: float, warmup: int, aux_weight: float,
          eval_every: int, eval_size: int, test_size: int, precision: str) -> dict:
    """Train from `seed`, write the model and processor into the new directory `out`."""
    torch.set_num_threads(2)
    model = build_model(seed)
    model.config.use_cache = False
    config = model.config
    aux = Auxiliary(config.vision_config.hidden_size, config.text_config.hidden_size)
    tower: dict[str, Tensor] = {}
    model.model.vision_tower.register_forward_hook(lambda _, args, output: tower.__setitem__("x", output.last_hidden_state))
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {parameters} parameters", flush=True)
    params = [*model.parameters(), *aux.parameters()]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.05},
                                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.98))
    data = torch.utils.data.DataLoader(Items(steps * batch_size, seed), batch_size=batch_size, num_workers=1,
                                       prefetch_factor=4, collate_fn=collate, worker_init_fn=single_thread_worker)
    val = vqa.fixed_eval_batch("val", eval_size)
    start = time.time()
    model.train()
    for step, batch in enumerate(data):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        with torch.autocast("cpu", dtype=PRECISIONS[precision], enabled=precision != "float32"):
            output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           pixel_values=batch["pixel_values"], output_hidden_states=True)
        rows = torch.arange(len(batch["last"]))
        ends = torch.full_like(batch["answer"], TOKEN["</s>"])
        logits = torch.cat([output.logits[rows, batch["last"]], output.logits[rows, batch["last"] + 1]]).float()
        loss = F.cross_entropy(logits, torch.cat([batch["answer"], ends]))
        aux_losses = aux.losses(tower["x"].float(), tuple(h.float() for h in output.hidden_states), batch)
        optimise(optimizer, params, loss, aux_losses, aux_weight)
        log_step(step, loss, aux_losses, start)
        validate(step, steps, eval_every, model, lambda: accuracy(model, val))
    seconds = time.time() - start
    model.eval().requires_grad_(False)
    test = vqa.fixed_eval_batch("test", test_size)
    metadata = {
        "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup, "aux_weight": aux_weight,
        "precision": precision,
        "parameters": parameters, "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
        "eval_subset": f"first {test_size} examples of the test split (data seed 0)",
        "test_accuracy": accuracy(model, test),
        "test_accuracy_random_keep_25": accuracy(model, test, "random", 0.25),
        "test_accuracy_random_keep_50": accuracy(model, test, "random", 0.5),
        "test_accuracy_cls_keep_50": accuracy(model, test, "cls", 0.5),
        "test_majority_baseline": majority_baseline(test),
    }

    def fill(temp: Path) -> None:
        model.save_pretrained(temp)
        build_processor().save_pretrained(temp)
        (temp / "training.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")

    if out.exists():
        shutil.rmtree(out)
    write_directory_atomically(out, fill)
    for key in (k for k in metadata if k.startswith("test_")):
        print(f"{key}: {format_accuracy(metadata[key])}", flush=True)
    print(f"trained {steps} steps in {seconds:.0f}s; wrote {out}", flush=True)
    return metadata


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=LLAVA_DIRECTORY)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--aux-weight", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=1500)
    p.add_argument("--eval-size", type=int, default=500)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="bfloat16",
                   help="autocast dtype of forward and backward (weights stay float32)")
    a = p.parse_args(argv)
    train(a.out, a.seed, a.steps, a.batch_size, a.lr, a.warmup, a.aux_weight, a.eval_every, a.eval_size, a.test_size,
          a.precision)


if __name__ == "__main__":
    main()
