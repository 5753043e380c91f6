"""The shipped HF LLaVA (`deos_dsl/embedded/llava/`, deos name `embedded:llava`).

Plain transformers loads the folder and generates the right answers, ending its turn itself; the
processor makes exactly the ids and pixels training used; the accuracy `training.json` records is
what the shipped weights score; its CLS attention carries information (it falls on the
patches that hold objects, and a CLS-ranked half of the tokens beats a random half); the folder
is small and holds no pickle; `--data embedded` on it reads the benchmark through its processor.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from rich.console import Console

from deos_dsl import cli
from deos_dsl.compiler.models import LLAVA, resolve_model
from deos_dsl.data import shapes_vqa_example
from deos_dsl.embedded import LLAVA_DIRECTORY, fixed_eval_batch, make_example, vqa
from deos_dsl.embedded.llava import IMAGE_TOKENS, TOKEN, pixel_values, training_inputs
from deos_dsl.embedded.llava_eval import accuracy, answers, cls_attention
from deos_dsl.tasks import LanguageTask, ProceduralChatSource, make_task

SPACES = Path(__file__).resolve().parents[2] / "spaces"
RECORD = json.loads((LLAVA_DIRECTORY / "training.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def shipped() -> tuple[tf.LlavaForConditionalGeneration, tf.ProcessorMixin]:
    model = tf.LlavaForConditionalGeneration.from_pretrained(LLAVA_DIRECTORY, local_files_only=True)
    return model.eval(), tf.AutoProcessor.from_pretrained(LLAVA_DIRECTORY, local_files_only=True)


def _prompt(processor: tf.ProcessorMixin, question: str) -> str:
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)


def test_plain_transformers_generates_the_answers(shipped):
    """`generate` ends its turn itself (`</s>` after one answer word), and says what the
    evaluation reads (the argmax answer after the prompt, `llava_eval.answers`), so the recorded
    accuracy is the generated one; on these 200 questions it answers far above chance (about 37%)."""
    model, processor = shipped
    count = 200
    examples = [shapes_vqa_example("test", index) for index in range(count)]
    replies = []
    for example in examples:
        inputs = processor(text=[_prompt(processor, example.prompt)], images=list(example.images), return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        assert new[-1] == TOKEN["</s>"] and len(new) == 2, processor.tokenizer.convert_ids_to_tokens(new)
        replies.append(processor.decode(new, skip_special_tokens=True).strip())
    read = [vqa.ANSWERS[i] for i in answers(model, fixed_eval_batch("test", count)).tolist()]
    assert sum(reply == word for reply, word in zip(replies, read)) >= count - 1, list(zip(replies, read))
    right = sum(reply == example.answer for reply, example in zip(replies, examples))
    assert right >= 100, list(zip(replies, (e.answer for e in examples)))


def test_the_processor_makes_the_training_ids_and_pixels(shipped):
    _, processor = shipped
    for index in range(5):
        example, raw = shapes_vqa_example("val", index), make_example("val", index)
        inputs = processor(text=[_prompt(processor, example.prompt)], images=list(example.images), return_tensors="pt")
        ids, mask, last = training_inputs([raw.question], None)
        assert torch.equal(inputs["input_ids"], ids) and torch.equal(inputs["attention_mask"], mask)
        assert int(last) == ids.shape[1] - 1 and int((ids == TOKEN["<image>"]).sum()) == IMAGE_TOKENS
        exact = pixel_values(torch.from_numpy(vqa.render(raw))[None])
        assert (inputs["pixel_values"] - exact).abs().max() <= 1 / 255 + 1e-6  # the PNG's 8 bits, scaled by 2


def test_the_recorded_accuracy_is_what_the_weights_score(shipped):
    """The record is the shipped weights' (the issue's targets, every family above its majority
    and overall above the small model's 73.7, are NOT yet met: docs/embedded.md); it answers
    well above the majority baseline overall and far above chance on counting."""
    model, _ = shipped
    recorded = RECORD["test_accuracy"]
    measured = accuracy(model, fixed_eval_batch("test", 1000))
    assert abs(measured["overall"] - recorded["overall"]) <= 0.3, (measured, recorded)
    majority = RECORD["test_majority_baseline"]
    assert recorded["overall"] > majority["overall"] + 15 and recorded["count"] > 2 * majority["count"]


def test_cls_attention_falls_on_the_objects_and_ranks_better_than_chance(shipped):
    model, _ = shipped
    batch = fixed_eval_batch("test", 300)
    with torch.no_grad():
        attention = cls_attention(model, batch.pixels)  # [B, 144]
    objects = torch.stack([torch.from_numpy(vqa.patch_labels(make_example("test", i))) for i in range(300)]) > 0
    mass, share = (attention * objects).sum(1) / attention.sum(1), objects.float().mean(1)
    assert float(mass.mean()) > 1.5 * float(share.mean()), (float(mass.mean()), float(share.mean()))
    ranked, random = accuracy(model, batch, "cls", 0.5), accuracy(model, batch, "random", 0.5)
    assert ranked["overall"] > random["overall"], (ranked, random)


def test_the_folder_is_small_and_holds_no_pickle():
    files = {path.name: path.stat().st_size for path in LLAVA_DIRECTORY.iterdir()}
    assert sum(files.values()) < 25 * 2**20
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "training.json"} <= set(files)
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl", ".pth"))]


def test_data_embedded_reads_the_benchmark_through_the_processor(shipped):
    model, _ = shipped
    loaded = resolve_model(LLAVA)
    task = make_task("embedded", loaded)
    assert isinstance(task, LanguageTask) and isinstance(task.source, ProceduralChatSource)
    train, test = task.train_batch(0, 8), task.eval_batch(100, "test")
    length = task.source.length
    assert train.kwargs["input_ids"].shape == (8, length) and test.kwargs["input_ids"].shape == (100, length)
    assert task.families == vqa.FAMILIES and torch.equal(test.family, fixed_eval_batch("test", 100).family)
    with torch.no_grad():
        correct = task.correct(task.logits(loaded.model(**test.kwargs)), test)
    batch = fixed_eval_batch("test", 100)
    theirs = answers(model, batch) == batch.answer  # an independent reading: float pixels, argmax answer word
    assert float((correct == theirs).float().mean()) >= 0.97


def test_the_flagship_search_runs_on_it_by_default(tmp_path: Path):
    """`deos search spaces/eos.deos --space eos`, as a newcomer types it: the shipped LLaVA and
    the benchmark are the defaults, and both budgets of the flagship space are reachable."""
    out, err = io.StringIO(), io.StringIO()
    consoles = Console(file=out, width=200), Console(file=err, width=200)
    code = cli.main(["search", str(SPACES / "eos.deos"), "--space", "eos", "--out", str(tmp_path / "s"),
                     "--steps", "2", "--batch", "4", "--val", "0"], *consoles)
    assert code == 0, err.getvalue()
    schedule = json.loads((tmp_path / "s" / "schedule.json").read_text())
    assert schedule["model"] == LLAVA, schedule.get("model")
    assert "out of reach" not in err.getvalue() and "(met)" in out.getvalue()
