"""Train the shipped HF LLaVA (`llava.py`) on shapes-VQA and write it with its processor.

    python -m deos_dsl.embedded.train_hf --seed 0      # writes deos_dsl/embedded/llava/

From scratch, on fresh TRAIN examples every step (`torch.set_num_threads(2)`, one data worker),
AdamW with linear warm-up and cosine decay, gradient clipping. Forward and backward run under
bfloat16 autocast by default (`--precision bfloat16`; weights, optimiser state and losses stay
float32), with HF's eager attention: on the AMD EPYC that trained the shipped model a step takes
0.41-0.45 s so, 0.53-0.76 s with the bf16 `scaled_dot_product_attention` (its CPU backward is
slow) and 0.64 s in float32. The loss is
the cross-entropy of the answer word and of the `</s>` after it under teacher forcing (generation stops by itself).
On half of the batches the images lose a random number of their background patches (those with
no object pixel) and the placeholders close up (`drop_background`): every answer stays true, but
the question no longer sits at a fixed row, so the model cannot key what it reads on where it
sits and keeps working when a reducer before the language model renumbers the tokens. Plus
training-only auxiliary targets, each giving one stage of the model its own signal (heads
not shipped):

- `patch`: every patch token of the vision tower's last layer predicts its object label (as a
  pre-trained tower sees objects);
- `cls`: the tower's CLS token predicts the scene's class histogram (so CLS attention ranks the
  patches that hold objects: EViT and VisionZip rank tokens by it);
- `words`, `scene`: the last prompt token after language-model layers 0 and 1 predicts the
  question's bag of words, then the scene histogram (the first hops read the question, then
  the image);
- `cell`: every projected patch, as the language model reads it (RMS-normalised), predicts the
  layout cell it lies in. The language model's RoPE acts on queries and keys only, so an image
  token that a question word finds by its content can pass on WHERE it is only if its features
  say so; without this target they do not (a linear probe on the first shipped model's
  projected patches stayed at chance, ln 16);
- `ground`: the question words that name an object learn what the answer needs of it after
  layer 2: each shape word of a relation question its object's layout cell, the shape word of
  an existence question the cell of the one matching object (or "nowhere"), the column number
  of an attribute question the colour and shape of the object in that cell;
- `tally`: the word a count question counts, and both words a comparison compares, learn after
  layer 2 how many objects of the scene they describe (0-8);
- `attend`: those naming words put head 0 of layer 1 on the patch holding their object's centre
  (how they find it by content);
- `gather`: head 0 of layer 3 at the last prompt token attends to the naming words the answer
  combines (both shape words of a relation, the shape word of an existence question, the
  counted and the compared words);
- `relation`: for spatial-relation questions, the last prompt token after layer 3 predicts the
  layout row and column of both objects the question names (gathered from the shape words).

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
from .llava import IMAGE_TOKENS, PATCH, TOKEN, VOCABULARY, build_model, build_processor, pixel_values, training_inputs
from .llava_eval import accuracy, kept_image_embeds
from .loading import LLAVA_DIRECTORY
from .train import log_step, lr_at, optimise, single_thread_worker, validate

RELATION_LAYER = 3
GROUND_LAYER = 2
ATTEND_LAYER = 1
QUESTION_START = 1 + IMAGE_TOKENS  # sequence row of the first question word (after `USER:` and the image)
NOWHERE = vqa.LAYOUT * vqa.LAYOUT  # `locate` class of an object the scene does not hold
GRID = vqa.IMAGE_SIZE // PATCH
DROP_SHARE = 0.5  # share of training batches whose images lose background patches (`drop_background`)
PATCH_CELL = torch.tensor([r * PATCH // vqa.CELL * vqa.LAYOUT + c * PATCH // vqa.CELL for r in range(GRID) for c in range(GRID)])


def grounding(ex: vqa.Example) -> tuple[Tensor, Tensor]:
    """`(rows [3], targets [3, 4])`: the question words that name objects and what they should
    know; -100: no target. Columns 0-1: after layer `GROUND_LAYER` (relation: each object's shape
    word -> its layout cell; existence: the shape word -> the one matching object's cell or
    `NOWHERE`; attribute: the column number -> colour and shape of the object in that cell);
    column 2: the patch holding the object's centre, which the word attends to in layer
    `ATTEND_LAYER`; column 3: after layer `GROUND_LAYER`, how many objects the word describes
    (count: the counted word; compare: both compared words)."""
    rows = torch.zeros(3, dtype=torch.long)
    targets = torch.full((3, 4), -100, dtype=torch.long)
    cell = lambda o: o.row * vqa.LAYOUT + o.col  # noqa: E731
    if ex.family == "relation":
        for slot, (word, index) in enumerate(((3, ex.relevant[0]), (len(ex.question) - 2, ex.relevant[1]))):
            obj = ex.objects[index]
            rows[slot], targets[slot, :3] = QUESTION_START + word, torch.tensor([cell(obj), -100, vqa.centre_patch(obj)])
    elif ex.family == "exist":
        matches = [o for o in ex.objects if (o.size, o.colour, o.shape) == ex.question[3:6]]
        if len(matches) <= 1:
            rows[0] = QUESTION_START + 5
            targets[0, :3] = torch.tensor([cell(matches[0]), -100, vqa.centre_patch(matches[0])] if matches else [NOWHERE, -100, -100])
    elif ex.family == "attribute":
        obj = ex.objects[ex.relevant[0]]
        rows[2] = QUESTION_START + 9
        targets[2, :3] = torch.tensor([vqa.COLOURS.index(obj.colour), vqa.SHAPES.index(obj.shape), vqa.centre_patch(obj)])
    elif ex.family in ("count", "compare"):
        for slot, word in enumerate((2,) if ex.family == "count" else (3, 5)):
            rows[slot], targets[slot, 3] = QUESTION_START + word, _described(ex.objects, ex.question[word])
    return rows, targets


def _described(objects: tuple[vqa.SceneObject, ...], word: str) -> int:
    """How many of `objects` a colour, size or plural shape word describes."""
    value = vqa.SHAPES[vqa.SHAPE_PLURALS.index(word)] if word in vqa.SHAPE_PLURALS else word
    return sum(value in (o.colour, o.size, o.shape) for o in objects)


def attention_log_probs(layer: nn.Module, rotary: nn.Module, hidden: Tensor, queries: Tensor) -> Tensor:
    """`[B, R, T]`: log attention weights of query head 0 of a Qwen2 decoder `layer` (its input
    `hidden [B, T, D]`, positions `0..T-1`, causal) at the sequence rows `queries [B, R]`,
    recomputed from the layer's own norm, projections and RoPE."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    b, t, _ = x.shape
    dim = attn.head_dim
    cos, sin = rotary(x, torch.arange(t)[None].expand(b, t))
    rotate = lambda v: torch.cat([-v[..., dim // 2:], v[..., :dim // 2]], dim=-1)  # noqa: E731
    picked = lambda v: v[torch.arange(b)[:, None], queries]  # noqa: E731
    q = attn.q_proj(picked(x))[..., :dim]
    q = q * picked(cos) + rotate(q) * picked(sin)
    k = attn.k_proj(x)[..., :dim]
    k = k * cos + rotate(k) * sin
    scores = (q @ k.transpose(1, 2)) * attn.scaling  # [B, R, T]
    future = torch.arange(t)[None, None] > queries[..., None]
    return scores.masked_fill(future, float("-inf")).log_softmax(dim=-1)


def drop_background(batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """The batch with `D` patches that hold no object pixel removed from every image, `D` drawn
    uniformly from 0 to the fewest such patches of any image (on `DROP_SHARE` of the batches;
    else `D = 0`). The image placeholders close up (the question moves `D` rows earlier, as after
    a reduction before the language model), so the model learns to read what it sees by content,
    not by where it sits, while every answer stays true. Adds `kept [B, 144 - D]` (the kept
    patches, in order) and moves the rows and centre-patch targets with the tokens."""
    background = batch["labels"] == 0  # [B, 144]
    reduce = float(torch.rand((), generator=generator)) < DROP_SHARE
    dropped = int(torch.randint(int(background.sum(dim=1).min()) + 1, (), generator=generator)) if reduce else 0
    score = torch.rand(background.shape, generator=generator).masked_fill(~background, 2.0)  # objects first
    kept = score.topk(IMAGE_TOKENS - dropped, dim=1).indices.sort(dim=1).values
    columns = torch.cat([torch.arange(QUESTION_START - dropped), torch.arange(QUESTION_START, batch["input_ids"].shape[1])])
    row_of = torch.full(background.shape, -100, dtype=torch.long).scatter_(1, kept, torch.arange(kept.shape[1]).expand_as(kept))
    ground = batch["ground"].clone()
    centre = ground[..., 2]
    ground[..., 2] = torch.where(centre >= 0, row_of.gather(1, centre.clamp(min=0)), centre)
    rows = batch["ground_rows"]
    return {**batch, "input_ids": batch["input_ids"][:, columns], "attention_mask": batch["attention_mask"][:, columns],
            "last": batch["last"] - dropped, "ground": ground, "kept": kept,
            "ground_rows": torch.where(rows >= QUESTION_START, rows - dropped, rows)}


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
                torch.from_numpy(vqa.class_histogram(ex)), relation, *grounding(ex))


def collate(items: list[tuple]) -> dict[str, Tensor]:
    pixels, questions, answers, labels, histogram, relation, ground_rows, ground = zip(*items)
    ids, mask, last = training_inputs(list(questions), list(answers))
    return {"pixel_values": pixel_values(torch.stack(pixels)), "input_ids": ids, "attention_mask": mask, "last": last,
            "answer": torch.tensor([TOKEN[a] for a in answers]), "labels": torch.stack(labels),
            "histogram": torch.stack(histogram), "relation": torch.stack(relation),
            "ground_rows": torch.stack(ground_rows), "ground": torch.stack(ground)}


class Auxiliary(nn.Module):
    """The training-only heads (module docstring)."""

    def __init__(self, vision: int, text: int) -> None:
        super().__init__()
        self.patch = nn.Linear(vision, vqa.PART_CLASS + 1)
        self.cls = nn.Linear(vision, vqa.N_OBJECT_CLASSES)
        self.words = nn.Linear(text, len(VOCABULARY))
        self.scene = nn.Linear(text, vqa.N_OBJECT_CLASSES)
        self.relation = nn.Linear(text, 4 * vqa.LAYOUT)
        self.cell = nn.Linear(text, vqa.LAYOUT * vqa.LAYOUT)
        self.locate = nn.Linear(text, NOWHERE + 1)
        self.identify = nn.Linear(text, len(vqa.COLOURS) + len(vqa.SHAPES))
        self.tally = nn.Linear(text, vqa.MAX_OBJECTS + 1)

    def losses(self, language_model: nn.Module, tower: Tensor, hidden: tuple[Tensor, ...],
               batch: dict[str, Tensor]) -> dict[str, Tensor]:
        rows, ground = torch.arange(len(batch["last"])), batch["ground"]
        looks = attention_log_probs(language_model.layers[ATTEND_LAYER], language_model.rotary_emb,
                                    hidden[ATTEND_LAYER], batch["ground_rows"])  # [B, 3, T]
        patch = ground[:, :, 2]
        looked = looks.gather(2, (1 + patch.clamp(min=0))[..., None])[..., 0]  # at the object's centre patch
        gathers = attention_log_probs(language_model.layers[RELATION_LAYER], language_model.rotary_emb,
                                      hidden[RELATION_LAYER], batch["last"][:, None])[:, 0]  # [B, T]
        gathered = (ground[:, :2, 0] >= 0) | (ground[:, :2, 3] >= 0)  # [B, 2]: the words the answer combines
        named_words = gathers.gather(1, batch["ground_rows"][:, :2]).masked_fill(~gathered, float("-inf")).logsumexp(dim=1)
        asks = gathered.any(dim=1)
        at = lambda layer: hidden[layer + 1][rows, batch["last"]]  # noqa: E731  (after LM layer `layer`)
        prompt = torch.arange(batch["input_ids"].shape[1]) <= batch["last"][:, None]  # the question, not the answer
        words = torch.zeros(len(rows), len(VOCABULARY)).scatter_(1, batch["input_ids"] * prompt, 1.0)
        relation = self.relation(at(RELATION_LAYER)).view(-1, 4, vqa.LAYOUT)
        named = hidden[GROUND_LAYER + 1][rows[:, None], batch["ground_rows"]]  # [B, 3, D]
        located, identified = self.locate(named[:, :2]), self.identify(named[:, 2])
        kept = batch["kept"]
        image = F.rms_norm(hidden[0][:, 1:1 + kept.shape[1]], (hidden[0].shape[-1],))  # the patches as the LM reads them
        return {
            "patch": F.cross_entropy(self.patch(tower[:, 1:]).flatten(0, 1), batch["labels"].flatten()),
            "cls": F.mse_loss(self.cls(tower[:, 0]), batch["histogram"]),
            "words": F.binary_cross_entropy_with_logits(self.words(at(0)), words),
            "scene": F.mse_loss(self.scene(at(1)), batch["histogram"]),
            "relation": F.cross_entropy(relation.flatten(0, 1), batch["relation"].flatten(), ignore_index=-100)
            if bool((batch["relation"] >= 0).any()) else torch.zeros(()),
            "cell": F.cross_entropy(self.cell(image).flatten(0, 1), PATCH_CELL[kept].flatten()),
            "ground": _masked_cross_entropy(located, ground[:, :2, 0])
            + _masked_cross_entropy(identified[:, :len(vqa.COLOURS)], ground[:, 2, 0])
            + _masked_cross_entropy(identified[:, len(vqa.COLOURS):], ground[:, 2, 1]),
            "tally": _masked_cross_entropy(self.tally(named[:, :2]), ground[:, :2, 3]),
            "attend": -looked[patch >= 0].mean() if bool((patch >= 0).any()) else torch.zeros(()),
            "gather": -named_words[asks].mean() if bool(asks.any()) else torch.zeros(()),
        }


def _masked_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over the targets that are not -100 (zero when there is none)."""
    flat = target.reshape(-1)
    if not bool((flat >= 0).any()):
        return torch.zeros(())
    return F.cross_entropy(logits.reshape(flat.numel(), -1), flat, ignore_index=-100)


PRECISIONS = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def train(out: Path, seed: int, steps: int, batch_size: int, lr: float, warmup: int, aux_weight: float,
          eval_every: int, eval_size: int, test_size: int, precision: str) -> dict:
    """Train from `seed`, write the model and processor into the new directory `out`."""
    torch.set_num_threads(2)
    model = build_model(seed)
    model.config.use_cache = False
    model.set_attn_implementation("eager")  # module docstring: the bf16 sdpa backward is slow on CPU
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
    dropping = torch.Generator().manual_seed(seed)
    start = time.time()
    model.train()
    for step, batch in enumerate(data):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        batch = drop_background(batch, dropping)
        with torch.autocast("cpu", dtype=PRECISIONS[precision], enabled=precision != "float32"):
            embeds = kept_image_embeds(model, batch["input_ids"], batch["pixel_values"], batch["kept"])
            output = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], output_hidden_states=True)
        rows = torch.arange(len(batch["last"]))
        ends = torch.full_like(batch["answer"], TOKEN["</s>"])
        logits = torch.cat([output.logits[rows, batch["last"]], output.logits[rows, batch["last"] + 1]]).float()
        loss = F.cross_entropy(logits, torch.cat([batch["answer"], ends]))
        aux_losses = aux.losses(model.model.language_model, tower["x"].float(), tuple(h.float() for h in output.hidden_states), batch)
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
    p.add_argument("--eval-every", type=int, default=1300)
    p.add_argument("--eval-size", type=int, default=500)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="bfloat16",
                   help="autocast dtype of forward and backward (weights stay float32)")
    a = p.parse_args(argv)
    train(a.out, a.seed, a.steps, a.batch_size, a.lr, a.warmup, a.aux_weight, a.eval_every, a.eval_size, a.test_size,
          a.precision)


if __name__ == "__main__":
    main()
