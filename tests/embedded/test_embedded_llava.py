"""The shipped HF LLaVA (`deos_dsl/embedded/llava/`, deos name `embedded:llava`).

Plain transformers loads the folder and generates the right answers, ending its turn itself; the
processor makes exactly the ids and pixels training used; the accuracy `training.json` records is
what the shipped weights score; its CLS attention carries information (it falls on the
patches that hold objects, and a CLS-ranked half of the tokens beats a random half); the folder
is small and holds no pickle; `--data embedded` on it reads the benchmark through its processor;
its emitted models generate (prefill with the plan, decode on the reduced cache).
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from rich.console import Console

from deos_dsl import cli
from deos_dsl.compiler.models import LLAVA, resolve_model
from deos_dsl.data import ChatEncoder, shapes_vqa_example
from deos_dsl.embedded import LLAVA_DIRECTORY, fixed_eval_batch, make_example, vqa
from deos_dsl.embedded.llava import IMAGE_TOKENS, TOKEN, pixel_values, training_inputs
from deos_dsl.embedded.llava_eval import accuracy, answers, cls_attention
from deos_dsl.frontend import load_spaces, loads
from deos_dsl.pipeline import compile_emitted, generator_of
from deos_dsl.pipeline.generate import dense_generator
from deos_dsl.tasks import LanguageTask, ProceduralChatSource, make_task

SPACES = Path(__file__).resolve().parents[2] / "spaces"
RECORD = json.loads((LLAVA_DIRECTORY / "training.json").read_text(encoding="utf-8"))
FASTV_KEEP_ALL = """space keep_all {
  tokens { reducible: visual protected: text, system }
  site decoder.layers[1] { activate: on retain: 100% score: attention(query: last) operator: prune }
}"""


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
    """The record is the shipped weights', and it meets the targets the model was built for:
    every family above its majority answer, overall above the small model's 73.7."""
    model, _ = shipped
    recorded = RECORD["test_accuracy"]
    measured = accuracy(model, fixed_eval_batch("test", 1000))
    assert abs(measured["overall"] - recorded["overall"]) <= 0.3, (measured, recorded)
    majority = RECORD["test_majority_baseline"]
    assert all(recorded[family] > majority[family] for family in vqa.FAMILIES), (recorded, majority)
    assert recorded["overall"] > 73.7, recorded


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
    relation = make_task("embedded{relation}", loaded).eval_batch(20, "test")  # test examples 3, 8, 13, ...
    rows = [i for i, family in enumerate(test.family.tolist()) if vqa.FAMILIES[family] == "relation"][:20]
    assert len(rows) == 20 and torch.equal(relation.kwargs["input_ids"], test.kwargs["input_ids"][rows])
    assert torch.equal(relation.kwargs["pixel_values"], test.kwargs["pixel_values"][rows])


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


def _generation_inputs(count: int) -> tuple[ChatEncoder, list[str]]:
    examples = [shapes_vqa_example("test", index) for index in range(count)]
    encoder = ChatEncoder(resolve_model(LLAVA).processor, [dataclasses.replace(ex, answer=None) for ex in examples])
    return encoder, [example.answer for example in examples]


def test_the_emitted_model_generates_like_dense_with_every_token_kept(shipped):
    """All-keep FastV site (active, keeps 100%): greedy generation on the emitted prefill and its
    cache equals plain transformers' `generate`, prompt by prompt."""
    model, processor = shipped
    encoder, _ = _generation_inputs(6)
    loaded = resolve_model(LLAVA)
    first = encoder.batch([0]).kwargs
    space = loads(FASTV_KEEP_ALL)[0]
    generator = generator_of(compile_emitted(space, dataclasses.replace(loaded, kwargs=first)), loaded)
    for index in range(len(encoder)):
        padded = encoder.batch([index]).kwargs  # prompts of other lengths: the graph's length is dynamic
        real = int(padded["attention_mask"].sum())
        inputs = {**padded, "input_ids": padded["input_ids"][:, :real], "attention_mask": padded["attention_mask"][:, :real]}
        ours = generator.generate(inputs, 4, TOKEN["</s>"]).tokens
        with torch.no_grad():
            theirs = model.generate(**inputs, max_new_tokens=4, do_sample=False)[:, inputs["input_ids"].shape[1]:]
        assert torch.equal(ours[:, :theirs.shape[1]], theirs)


def test_fastv_generates_on_a_shorter_cache_and_still_answers():
    """FastV (K = 2, R = 50%) on 64 right-padded prompts: layers 2-7 cache 72 fewer tokens, the
    first generated token is the emitted prefill's answer, and the answers stay close to dense
    (measured: 36/64 right vs dense 41/64, 58/64 identical to dense)."""
    encoder, expected = _generation_inputs(64)
    loaded = resolve_model(LLAVA)
    inputs = encoder.batch(list(range(len(encoder)))).kwargs
    on_inputs = dataclasses.replace(loaded, kwargs=inputs)
    emitted = compile_emitted(next(s for s in load_spaces(SPACES / "fastv.deos") if s.name == "fastv"), on_inputs)
    generated = generator_of(emitted, on_inputs).generate(inputs, 3, TOKEN["</s>"])
    dense = dense_generator(loaded).generate(inputs, 3, TOKEN["</s>"])
    length = inputs["input_ids"].shape[1]
    assert dense.cache_lengths == [length] * 8
    assert generated.cache_lengths == [length] * 2 + [length - IMAGE_TOKENS // 2] * 6
    with torch.no_grad():
        logits = emitted.module(**inputs).logits
    last = inputs["attention_mask"].sum(dim=1) - 1 - (length - logits.shape[1])
    assert torch.equal(logits[torch.arange(len(encoder)), last].argmax(-1), generated.tokens[:, 0])
    words = [[loaded.processor.tokenizer.decode(row[:1]).strip() for row in run.tokens.tolist()] for run in (generated, dense)]
    right = [sum(word == answer for word, answer in zip(run, expected)) for run in words]
    assert right[0] >= 32 and right[1] >= 38 and sum(a == b for a, b in zip(*words)) >= 54, right
