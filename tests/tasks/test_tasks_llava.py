"""Any model, any data: a tiny HF LLaVA saved to disk with its processor (`--model DIR`) and the
shipped benchmark written out as JSONL (`--data FILE.jsonl`), end to end through the CLI: the
checkpoint loads by path, compile / cost work on it, a search with the `lm` and with the `kl`
objective lowers its loss, discretises exactly onto the budget and emits a graph that runs
shorter, `deos evaluate --data` measures it; bad models and bad data are named, before compute."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from PIL import Image
from checkpoint_cases import run, search_learns_onto_budget
from tiny_llava import save_tiny_llava, sharpen_and_self_label

from deos_dsl.compiler.models import resolve_model
from deos_dsl.data import ChatEncoder, Example, export_embedded, prompt_batches, read_jsonl, shapes_vqa_example
from deos_dsl.errors import DataError, DeosCompileError
from deos_dsl.tasks import LanguageTask, make_task

SPACE = """space llava_search {{
  tokens {{
    reducible: visual
    protected: text
  }}
  defaults {{
    activate: learned init 0.8
    retain: learned [10%, 100%] init 15%
    score: attention(query: last)
    operator: unified {{
      gamma: learned [0, 1] init 0.2
    }}
  }}
  site projector {{ score: norm }}
  site decoder.layers[1] {{}}
  constraint tokens.mean <= 50%
  objective {{ task: {task} }}
  policy {{ steps: 30  lr: 0.1 }}
}}
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the model directory, its JSONL dataset: 48 exported train examples, self-labelled)."""
    tmp = tmp_path_factory.mktemp("llava")
    directory = save_tiny_llava(tmp / "tiny-llava")
    data = export_embedded("train", 48, tmp / "data")
    sharpen_and_self_label(directory, data)
    return directory, data


def test_a_checkpoint_loads_by_path_with_its_processor(checkpoint: tuple[Path, Path]):
    directory, _ = checkpoint
    loaded = resolve_model(str(directory))
    assert type(loaded.model).__name__ == "LlavaForConditionalGeneration" and not loaded.model.training
    assert loaded.processor is not None and loaded.source.startswith(f"checkpoint {directory}")
    assert not any(p.requires_grad for p in loaded.model.parameters())
    ids = loaded.kwargs["input_ids"]
    image = loaded.model.config.image_token_id
    assert int((ids[0] == image).sum()) == 16 and loaded.kwargs["pixel_values"].shape == (2, 3, 32, 32)


def test_a_checkpoint_that_cannot_load_is_named(checkpoint: tuple[Path, Path], tmp_path: Path):
    directory, _ = checkpoint
    empty = tmp_path / "empty"
    empty.mkdir()
    no_weights = tmp_path / "no-weights"
    shutil.copytree(directory, no_weights)
    (no_weights / "model.safetensors").unlink()
    for name, message in ((str(empty), "has no config.json"), (str(tmp_path / "missing"), "no checkpoint directory"),
                          (str(no_weights), "cannot load the model in"),
                          ("hf:nobody/nothing", "is not in the local Hugging Face cache")):
        with pytest.raises(DeosCompileError, match=message):
            resolve_model(name)
    space = tmp_path / "space.deos"
    space.write_text(SPACE.format(task="lm"))
    code, _, err = run("compile", space, "--model", empty)
    assert code == 1 and f"deos: error: {empty} has no config.json" in err and "Traceback" not in err


def test_compile_and_cost_on_the_checkpoint(checkpoint: tuple[Path, Path], tmp_path: Path):
    directory, _ = checkpoint
    space = tmp_path / "space.deos"
    space.write_text(SPACE.format(task="lm"))
    code, out, err = run("compile", space, "--model", directory)
    assert code == 0, err
    assert "model.multi_modal_projector@0" in out and "model.language_model.layers.1@1" in out
    code, out, err = run("cost", space, "--model", directory)
    assert code == 0 and "dense " in out, err


@pytest.mark.parametrize("task", ["lm", "kl"])
def test_a_search_on_the_checkpoint_and_its_data_end_to_end(task: str, checkpoint: tuple[Path, Path], tmp_path: Path):
    directory, data = checkpoint
    space = tmp_path / "space.deos"
    space.write_text(SPACE.format(task=task))
    out_dir = tmp_path / "run"
    search_learns_onto_budget(space, directory, data, out_dir)
    plan = json.loads((out_dir / "emitted" / "plan.json").read_text())
    active = [site for site in plan["sites"] if site["active"]]
    assert active and all(site["tokens_out"] < site["tokens_in"] for site in active)
    emitted = torch.export.load(out_dir / "emitted" / "model.pt2").module()
    loaded = resolve_model(str(directory))
    with torch.no_grad():
        dense, reduced = loaded.model(**loaded.kwargs).logits, emitted(**loaded.kwargs)[0]
    removed = sum(site["tokens_in"] - site["tokens_out"] for site in active)
    assert reduced.shape[1] == dense.shape[1] - removed  # the tokens really go
    code, out, err = run("evaluate", out_dir, "--data", data, "--examples", "16", "--repeats", "1")
    assert code == 0, err
    assert "accuracy (%, 16 test examples)" in out and "latency ms, B=16" in out


def test_kl_runs_without_answers_and_lm_is_refused_before_compute(checkpoint: tuple[Path, Path], tmp_path: Path):
    directory, data = checkpoint
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "answer"} |
                                       {"image": str(data.parent / json.loads(line)["image"])}) + "\n"
                            for line in data.read_text().splitlines()[:16]))
    space = tmp_path / "space.deos"
    space.write_text(SPACE.format(task="lm").replace("steps: 30", "steps: 2"))
    code, _, err = run("search", space, "--model", directory, "--data", bare, "--out", tmp_path / "lm", "--batch", "8")
    assert code == 1 and "objective `lm` needs an answer on every example" in err and "task: kl" in err
    assert not (tmp_path / "lm").exists()
    space.write_text(SPACE.format(task="kl").replace("steps: 30", "steps: 2"))
    code, _, err = run("search", space, "--model", directory, "--data", bare, "--out", tmp_path / "kl", "--batch", "8",
                       "--val", "0")
    assert code == 0, err


def test_bad_data_is_named_by_line_before_compute(checkpoint: tuple[Path, Path], tmp_path: Path):
    directory, data = checkpoint
    image = str(data.parent / json.loads(data.read_text().splitlines()[0])["image"])
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    lines = [
        {"image": image, "prompt": "how many circles ?", "answer": "2"},
        "{not json",
        {"image": "missing.png", "prompt": "how many ?"},
        {"image": str(not_image), "prompt": "how many ?"},
        {"image": image, "prompt": ""},
        {"image": image, "prompt": "x", "anwser": "2"},
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    with pytest.raises(DataError) as caught:
        read_jsonl(bad)
    message = caught.value.message
    reported = {line.strip().split(": ", 1)[0]: line for line in message.splitlines()[1:]}
    for number, text in ((2, "not JSON"), (3, "image missing.png not found"), (4, "cannot be read as an image"),
                         (5, "`prompt` must be a non-empty string"), (6, "unknown key(s) `anwser`")):
        assert text in reported[f"{bad}:{number}"], message
    assert f"{bad}:1:" not in message
    space = tmp_path / "space.deos"
    space.write_text(SPACE.format(task="lm"))
    code, _, err = run("search", space, "--model", directory, "--data", bad, "--out", tmp_path / "run")
    assert code == 1 and "5 bad example(s)" in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_the_encoder_finds_every_examples_image_tokens(checkpoint: tuple[Path, Path], tmp_path: Path):
    directory, data = checkpoint
    loaded = resolve_model(str(directory))
    examples = read_jsonl(data)[:4]
    encoder = ChatEncoder(loaded.processor, examples)
    batch = encoder.batch([0, 1, 2, 3])
    image = loaded.model.config.image_token_id
    start, end = encoder.span
    assert bool((batch.kwargs["input_ids"][:, start:end] == image).all()) and end - start == 16
    assert bool((batch.kwargs["input_ids"][:, end:] != image).all())
    assert batch.kwargs["input_ids"].shape[1] == encoder.length  # right-padded to the longest example
    assert batch.positions.sum(dim=1).tolist() == [1, 1, 1, 1]  # one answer token each
    grey = Image.new("RGB", (40, 40), (90, 90, 90))
    elsewhere = Example((grey,), "how many", "2", line=9, file="d.jsonl")
    encoder.prompt_text = lambda example: (f"USER: {'what ' * 3 if example is elsewhere else ''}<image> "
                                           f"{example.prompt} ASSISTANT:")
    with pytest.raises(DataError, match="d.jsonl:9: the image tokens sit at 4..20"):
        ChatEncoder.__init__(encoder, loaded.processor, [Example((grey,), "how many", "2", line=1, file="d.jsonl"),
                                                         elsewhere])


def test_the_task_of_a_checkpoint_on_jsonl_is_a_language_task(checkpoint: tuple[Path, Path]):
    directory, data = checkpoint
    loaded = resolve_model(str(directory))
    task = make_task(str(data), loaded)
    assert isinstance(task, LanguageTask) and task.families == ("attribute", "compare", "count", "exist", "relation")
    batch = task.eval_batch(8)
    with torch.no_grad():
        logits = task.logits(loaded.model(**batch.kwargs))
    assert task.correct(logits, batch).all()  # the self-labelled answers are the model's own
    assert task.loss(logits, batch, "kl", logits).item() == pytest.approx(0.0, abs=1e-6)


def test_a_vision_tower_space_on_the_checkpoint(checkpoint: tuple[Path, Path], tmp_path: Path):
    directory, data = checkpoint
    space = tmp_path / "space.deos"
    space.write_text(SPACE.format(task="lm").replace("site projector {{ score: norm }}", "")
                     .replace("site projector { score: norm }", "").replace("decoder.layers[1]", "vision.layers[0]")
                     .replace("protected: text", "protected: cls").replace("steps: 30", "steps: 4")
                     .replace("attention(query: last)", "attention(query: cls)").replace("<= 50%", "<= 70%"))
    code, out, err = run("search", space, "--model", directory, "--data", data, "--out", tmp_path / "run", "--batch",
                         "8", "--val", "8", "--emit")
    assert code == 0, err
    assert "site model.vision_tower.encoder.layers.0@0: keeps" in out
    plan = json.loads((tmp_path / "run" / "emitted" / "plan.json").read_text())
    (site,) = plan["sites"]
    assert site["active"] and site["tokens_out"] < site["tokens_in"]


def test_hf_org_name_resolves_from_the_local_cache_offline(checkpoint: tuple[Path, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    """`hf:ORG/NAME` is read from the Hugging Face cache layout (refs/main -> snapshots/<rev>)."""
    directory, _ = checkpoint
    repo = tmp_path / "hub" / "models--tiny--llava"
    shutil.copytree(directory, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = resolve_model("hf:tiny/llava")
    assert loaded.source.startswith(f"checkpoint {repo / 'snapshots' / '0123abc'}")
    with pytest.raises(DeosCompileError, match="`tiny/other` is not in the local Hugging Face cache"):
        resolve_model("hf:tiny/other")


def test_a_checkpoint_without_its_processor_is_named(checkpoint: tuple[Path, Path], tmp_path: Path):
    directory, _ = checkpoint
    bare = tmp_path / "no-processor"
    shutil.copytree(directory, bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        (bare / name).unlink()
    with pytest.raises(DeosCompileError, match=f"no processor in {bare}") as caught:
        resolve_model(str(bare))
    assert "processor.save_pretrained" in caught.value.hint


def examples_factory() -> list[Example]:
    """A `module:` data factory (this module's)."""
    grey = Image.new("RGB", (40, 40), (90, 90, 90))
    return [Example((grey,), "how many circles ?", "2", line=i + 1, file="factory") for i in range(4)]


def test_a_data_factory_and_several_images_per_example(checkpoint: tuple[Path, Path]):
    directory, _ = checkpoint
    loaded = resolve_model(str(directory))
    task = make_task("module:test_tasks_llava:examples_factory", loaded)
    assert isinstance(task, LanguageTask) and len(task.eval_batch(10)) == 4
    with pytest.raises(DataError, match="returned int"):
        make_task("module:os:getpid", loaded)
    grey = Image.new("RGB", (40, 40), (90, 90, 90))
    two = ChatEncoder(loaded.processor, [Example((grey, grey), "are there more circles ?", "yes")])
    assert two.span[1] - two.span[0] == 32  # both images' tokens, one run
    assert two.batch([0]).kwargs["pixel_values"].shape[0] == 2


FASTV_HALF = """space fastv_half {
  tokens { reducible: visual protected: text }
  site decoder.layers[1] { activate: on retain: 50% score: attention(query: last) operator: prune }
}
"""


def test_emit_generate_and_answer_through_the_cli(checkpoint: tuple[Path, Path], tmp_path: Path):
    """`deos emit --generate --batch 1` writes prefill.pt2 (dynamic prompt length), and `deos
    generate --dense` answers the JSONL's prompts with it beside the dense checkpoint, and its
    layer 2 caches half the image tokens; a directory without an emitted model is named."""
    directory, data = checkpoint
    space = tmp_path / "fastv.deos"
    space.write_text(FASTV_HALF)
    out = tmp_path / "generative"
    code, printed, err = run("emit", space, "--model", directory, "--out", out, "--generate", "--batch", "1")
    assert code == 0, err
    assert (out / "prefill.pt2").is_file() and "prefill.pt2" in printed
    plan = json.loads((out / "plan.json").read_text())
    assert plan["generation"]["dynamic_length"] and plan["generation"]["inputs"]["input_ids"][0] == 1
    code, printed, err = run("generate", out, "--data", data, "--examples", "6", "--max-new-tokens", "2", "--dense")
    assert code == 0, err
    cache = next(line for line in printed.splitlines() if line.startswith("KV cache"))
    length = int(cache.split("dense [")[1].split(",")[0])
    image = ChatEncoder(resolve_model(str(directory)).processor, read_jsonl(data, 1)).span
    assert f"emitted [{length}, {length}, {length - (image[1] - image[0]) // 2}]" in cache  # 3 layers
    assert "answers starting with the expected one: emitted" in printed and "identical to dense: " in printed
    code, _, err = run("generate", tmp_path, "--data", data)
    assert code != 0 and "holds no readable emitted model" in err


def test_the_gpu_checks_scaled_checkpoint_has_llava_15_geometry_and_runs(tmp_path: Path):
    # benchmarks/scaled_llava.py (the GPU speed model; `smoke`: its token counts, tiny widths)
    directory = tmp_path / "scaled"
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "scaled_llava.py"
    subprocess.run([sys.executable, str(script), "--out", str(directory), "--geometry", "smoke"], check=True,
                   capture_output=True)
    loaded = resolve_model(str(directory))
    (batch,) = prompt_batches(loaded.processor, [shapes_vqa_example("test", 0)], [1]).values()
    image = loaded.model.config.image_token_id
    assert int((batch["input_ids"][0] == image).sum()) == 576 == loaded.model.config.image_seq_length
    assert batch["pixel_values"].shape == (1, 3, 336, 336)
    with torch.no_grad():
        logits = loaded.model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
