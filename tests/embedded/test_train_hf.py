"""The training command of the shipped HF LLaVA (`python -m deos_dsl.embedded.train_hf`), run for a
few steps: it writes a folder that plain transformers reloads, records how it was trained, and
the same seed gives the same weights bit for bit (the shipped model's reproducibility rests on it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

from deos_dsl.embedded import train_hf, vqa
from deos_dsl.embedded.llava import IMAGE, IMAGE_TOKENS, TOKEN, VOCABULARY

TINY = ["--steps", "3", "--batch-size", "4", "--eval-every", "2", "--eval-size", "10", "--test-size", "10"]


def _train(out: Path, *extra: str) -> dict:
    train_hf.main(["--out", str(out), *TINY, *extra])
    return json.loads((out / "training.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train_hf")
    _train(root / "a")
    _train(root / "b")
    return root / "a", root / "b"


def test_the_same_seed_writes_the_same_weights(twice):
    first, second = (load_file(folder / "model.safetensors") for folder in twice)
    assert first.keys() == second.keys() and all(first[k].equal(second[k]) for k in first)


def test_the_folder_reloads_and_records_its_training(twice):
    folder = twice[0]
    record = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    assert (record["seed"], record["steps"], record["batch_size"], record["precision"]) == (0, 3, 4, "bfloat16")
    assert set(record["test_accuracy"]) == {"count", "attribute", "exist", "relation", "compare", "overall"}
    model = tf.LlavaForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    assert all(p.dtype.is_floating_point and p.dtype == model.dtype for p in model.parameters())
    assert tf.AutoProcessor.from_pretrained(folder, local_files_only=True).tokenizer.eos_token == "</s>"


def test_float32_precision_trains_other_weights(tmp_path: Path, twice):
    record = _train(tmp_path / "fp32", "--precision", "float32")
    assert record["precision"] == "float32"
    bf16, fp32 = load_file(twice[0] / "model.safetensors"), load_file(tmp_path / "fp32" / "model.safetensors")
    assert any(not bf16[k].equal(fp32[k]) for k in bf16)


def test_grounding_targets_sit_on_the_words_that_name_the_objects():
    items = train_hf.Items(60, 0)
    batch = train_hf.collate([items[i] for i in range(60)])
    words = [VOCABULARY[int(i)] for i in batch["input_ids"].flatten()]
    width = batch["input_ids"].shape[1]
    seen = set()
    for b in range(60):
        example = items.data.example(b)
        rows, targets = batch["ground_rows"][b].tolist(), batch["ground"][b].tolist()
        at = lambda slot: words[b * width + rows[slot]]  # noqa: E731
        cell = lambda o: o.row * vqa.LAYOUT + o.col  # noqa: E731
        if example.family == "relation":
            a, c = (example.objects[i] for i in example.relevant)
            assert (at(0), at(1)) == (a.shape, c.shape)
            assert targets[:2] == [[cell(a), -100, vqa.centre_patch(a), -100], [cell(c), -100, vqa.centre_patch(c), -100]]
        elif example.family == "attribute":
            obj = example.objects[example.relevant[0]]
            assert at(2) == str(obj.col + 1) and at(2) == example.question[-2]
            assert targets[2] == [vqa.COLOURS.index(obj.colour), vqa.SHAPES.index(obj.shape), vqa.centre_patch(obj), -100]
        elif example.family == "exist" and targets[0][0] != -100:
            named = example.question[3:6]
            matches = [o for o in example.objects if (o.size, o.colour, o.shape) == named]
            assert at(0) == named[2] and targets[0][0] == (cell(matches[0]) if matches else train_hf.NOWHERE)
            assert targets[0][2] == (vqa.centre_patch(matches[0]) if matches else -100)
        elif example.family == "count":
            assert at(0) == example.question[2] and targets[0] == [-100, -100, -100, int(example.answer)]
        elif example.family == "compare":
            counts = [targets[0][3], targets[1][3]]
            assert (at(0), at(1)) == example.question[3:6:2] and min(counts) >= 0 and counts[0] != counts[1]
            assert (counts[0] > counts[1]) == (example.answer == "yes")
        else:
            assert targets == [[-100] * 4] * 3
        seen.add(example.family)
    assert seen == set(vqa.FAMILIES)


def test_attention_log_probs_are_the_layers_own_attention():
    config = tf.Qwen2Config(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = tf.Qwen2Model(config).eval()
    hidden = torch.randn(2, 9, 32)
    queries = torch.tensor([[3, 8], [0, 5]])
    with torch.no_grad():
        ours = train_hf.attention_log_probs(model.layers[0], model.rotary_emb, hidden, queries)
        eager = model(inputs_embeds=hidden, output_attentions=True).attentions[0][:, 0]  # head 0, [B, T, T]
    picked = eager[torch.arange(2)[:, None], queries]
    assert torch.allclose(ours.exp(), picked, atol=1e-6)
    assert torch.allclose(ours.exp().sum(-1), torch.ones(2, 2)) and bool((ours[0, 0, 4:] == float("-inf")).all())


def test_each_patch_knows_the_layout_cell_its_centre_pixel_lies_in():
    grid = vqa.IMAGE_SIZE // train_hf.PATCH
    for index, cell in enumerate(train_hf.PATCH_CELL.tolist()):
        y, x = (index // grid) * train_hf.PATCH + train_hf.PATCH // 2, (index % grid) * train_hf.PATCH + train_hf.PATCH // 2
        assert cell == (y // vqa.CELL) * vqa.LAYOUT + x // vqa.CELL


def test_dropping_background_patches_moves_every_target_with_its_token():
    items = train_hf.Items(40, 0)
    batch = train_hf.collate([items[i] for i in range(40)])
    generator = torch.Generator().manual_seed(3)
    drops = set()
    for _ in range(8):
        out = train_hf.drop_background(batch, generator)
        kept, ids = out["kept"], out["input_ids"]
        drops.add(IMAGE_TOKENS - kept.shape[1])
        assert ((ids == TOKEN[IMAGE]).sum(dim=1) == kept.shape[1]).all()
        for b in range(40):
            assert set((batch["labels"][b] != 0).nonzero().flatten().tolist()) <= set(kept[b].tolist())  # every object stays
            assert kept[b].tolist() == sorted(kept[b].tolist())
            for before, after in zip(batch["ground_rows"][b].tolist(), out["ground_rows"][b].tolist()):
                assert ids[b, after] == batch["input_ids"][b, before]
            assert ids[b, out["last"][b]] == batch["input_ids"][b, batch["last"][b]]
            for before, after in zip(batch["ground"][b, :, 2].tolist(), out["ground"][b, :, 2].tolist()):
                assert (before, after) == (-100, -100) or kept[b, after] == before
    assert 0 in drops and max(drops) > 30
