"""The Qwen2-VL family end to end: tiny Qwen2-VL and Qwen2.5-VL checkpoints saved to disk with
their tokenizer and image processor (`--model DIR`), the shipped benchmark as JSONL (`--data`).

Their whole forward does not export (the vision tower's attention is cut by sizes read from the
inputs), so deos splits them at the language model (`compiler/prelude.py`): checked here are the
processor's placeholder expansion by the image grid, that the split computes the model's own
logits, the M-RoPE rule (a kept token keeps its original 3-D position: the emitted graph equals
the HF language model run on the kept tokens with their original position ids), a search that
learns, lands exactly on its budget and emits an artefact that takes the processor's inputs,
and the refusals a user meets (images of several sizes, vision sites)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from checkpoint_cases import run, search_learns_onto_budget
from tiny_llava import sharpen_and_self_label
from tiny_qwen_vl import FAMILIES, save_tiny_qwen_vl

from deos_dsl.compiler.checkpoints import load_checkpoint
from deos_dsl.compiler.models import resolve_model
from deos_dsl.compiler.prelude import LanguageHead
from deos_dsl.data import ChatEncoder, Example, export_embedded
from deos_dsl.errors import DataError
from deos_dsl.frontend import loads
from deos_dsl.pipeline import compile_emitted, load_emitted
from deos_dsl.search.result import read_run, read_schedule

SEARCH = """space qwen_search {
  tokens {
    reducible: visual
    protected: text
  }
  defaults {
    activate: learned init 0.8
    retain: learned [10%, 100%] init 30%
    score: attention(query: last)
    operator: unified {
      gamma: learned [0, 1] init 0.2
    }
  }
  site decoder.layers[0] { at: before  score: norm }
  site decoder.layers[1] {}
  constraint tokens.mean <= 50%
  objective { task: lm }
  policy { steps: 30  lr: 0.1 }
}
"""

PRUNE = """space merger_prune {
  tokens { reducible: visual  protected: text }
  site decoder.layers[0] { at: before  activate: on  retain: 50%  score: norm  operator: prune }
}
"""


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the model directory, its JSONL dataset: 48 exported train examples, self-labelled)."""
    tmp = tmp_path_factory.mktemp(request.param)
    directory = save_tiny_qwen_vl(tmp / request.param, request.param)
    data = export_embedded("train", 48, tmp / "data")
    sharpen_and_self_label(directory, data)
    return directory, data


def test_the_processor_expands_each_image_by_its_grid_and_the_split_computes_the_models_logits(
        checkpoint: tuple[Path, Path]):
    directory, _ = checkpoint
    model, processor, raw, _ = load_checkpoint(str(directory))
    image = model.config.image_token_id
    grid = raw["image_grid_thw"]
    assert grid.tolist() == [[1, 8, 8]] * 2  # a 64x64 example image: an 8x8 grid of 8x8 patches
    assert ((raw["input_ids"] == image).sum(dim=1) == grid.prod(dim=1) // 4).all()  # merged 2x2
    assert torch.equal(raw["mm_token_type_ids"], (raw["input_ids"] == image).long())
    loaded = resolve_model(str(directory))
    assert isinstance(loaded.model, LanguageHead) and loaded.prelude is not None
    prepared = loaded.kwargs
    assert prepared["position_ids"].shape == (*raw["input_ids"].shape, 3)  # M-RoPE, batch-first
    with torch.no_grad():
        want = model(**raw).logits
        torch.testing.assert_close(loaded.model(**prepared), want, atol=1e-5 * float(want.abs().max()), rtol=0)
    # image tokens: 4 rows (the 8x8 grid merged 2x2) on the height axis; a text token has one position on all 3
    ids = raw["input_ids"][0]
    text = prepared["position_ids"][0][ids != image]
    assert bool((text[:, 0] == text[:, 1]).all()) and len(set(prepared["position_ids"][0][ids == image, 1].tolist())) == 4


def test_kept_tokens_keep_their_original_3d_positions(checkpoint: tuple[Path, Path]):
    """The merger's tokens pruned before decoder layer 0 (half kept, by norm): the emitted graph
    equals the HF language model run on the kept tokens with their ORIGINAL M-RoPE position ids."""
    directory, _ = checkpoint
    loaded = resolve_model(str(directory))
    loaded.model.double()  # float64: the rule holds exactly, no float32 reordering noise to tolerate
    loaded.kwargs = {key: value.double() if value.is_floating_point() else value for key, value in loaded.kwargs.items()}
    (space,) = loads(PRUNE)
    emitted = compile_emitted(space, loaded)
    with torch.no_grad():
        reduced = emitted.run()
    prepared = loaded.kwargs
    ids, embeds = prepared["input_ids"], prepared["inputs_embeds"]
    start, end = ((ids[0] == loaded.model.config.image_token_id).nonzero().flatten()[[0, -1]] + torch.tensor([0, 1])).tolist()
    chosen = embeds[:, start:end].norm(dim=-1).topk((end - start) // 2, dim=1).indices.sort(dim=1).values + start
    kept = torch.cat([torch.arange(start).expand(2, -1), chosen, torch.arange(end, ids.shape[1]).expand(2, -1)], dim=1)
    gathered = {"input_ids": ids.gather(1, kept), "inputs_embeds": embeds.gather(1, kept[..., None].expand(-1, -1, embeds.shape[2])),
                "position_ids": prepared["position_ids"].gather(1, kept[..., None].expand(-1, -1, 3))}
    if "attention_mask" in prepared:
        gathered["attention_mask"] = prepared["attention_mask"].gather(1, kept)
    with torch.no_grad():
        reference = loaded.model(**gathered)
    assert reduced.shape == reference.shape and reduced.shape[1] == ids.shape[1] - (end - start) // 2
    torch.testing.assert_close(reduced, reference, atol=1e-10, rtol=0)
    # renumbering the kept tokens 0..N'-1 instead is a different model: the rule is observable
    renumbered = dict(gathered, position_ids=torch.arange(kept.shape[1]).expand(2, 3, -1).permute(0, 2, 1))
    with torch.no_grad():
        assert not torch.allclose(loaded.model(**renumbered), reference, atol=1e-3)


def test_a_search_on_the_checkpoint_emits_a_model_that_takes_the_processors_inputs(checkpoint: tuple[Path, Path],
                                                                                    tmp_path: Path):
    directory, data = checkpoint
    space = tmp_path / "space.deos"
    space.write_text(SEARCH)
    out_dir = tmp_path / "run"
    search_learns_onto_budget(space, directory, data, out_dir)
    _, settings = read_schedule(out_dir)
    plan = json.loads((out_dir / "emitted" / "plan.json").read_text())
    assert plan["prelude"] is True and plan["dtype"] == "float32"
    active = [site for site in plan["sites"] if site["active"]]
    assert any(site["tokens_out"] < site["tokens_in"] for site in active)
    # the artefact on disk (exported at the checkpoint's example shapes: the plan fixes every
    # token count), called with what the processor returns (pixels, grid sizes, ids)
    emitted = load_emitted(out_dir / "emitted")
    _, _, raw, _ = load_checkpoint(str(directory))
    loaded = resolve_model(str(directory))
    assert set(raw) >= {"pixel_values", "image_grid_thw", "input_ids"}
    with torch.no_grad():
        (reduced,) = emitted(**raw)
        reference = compile_emitted(read_run(out_dir).space, loaded, settings).module(**loaded.prelude(raw))
    removed = sum(site["tokens_in"] - site["tokens_out"] for site in active)
    assert reduced.shape[1] == raw["input_ids"].shape[1] - removed  # the tokens really go
    scale = float(reference.abs().max())
    torch.testing.assert_close(reduced, reference, atol=1e-5 * scale, rtol=0)  # the same plan, compiled in memory
    code, out, err = run("evaluate", out_dir, "--data", data, "--examples", "16", "--repeats", "1")
    assert code == 0, err
    assert "accuracy (%, 16 test examples)" in out


def test_images_of_several_sizes_are_refused_with_the_resize_hint(checkpoint: tuple[Path, Path]):
    directory, _ = checkpoint
    loaded = resolve_model(str(directory))
    examples = [Example((Image.new("RGB", size, (90, 90, 90)),), "how many circles ?", "2", line=line, file="d.jsonl")
                for line, size in ((1, (64, 64)), (2, (32, 64)))]
    with pytest.raises(DataError) as caught:
        ChatEncoder(loaded.processor, examples, prelude=loaded.prelude)
    assert "d.jsonl:2: the image tokens sit at" in caught.value.message
    assert caught.value.hint.startswith("resize every image to one size")


def test_vision_sites_are_refused_with_the_merger_hint(checkpoint: tuple[Path, Path], tmp_path: Path):
    directory, _ = checkpoint
    space = tmp_path / "space.deos"
    space.write_text(PRUNE.replace("decoder.layers[0] { at: before ", "projector { "))
    code, _, err = run("compile", space, "--model", directory)
    assert code == 1 and "the model has no `projector`" in err and "`site decoder.layers[0] { at: before }`" in err
    assert "Traceback" not in err
