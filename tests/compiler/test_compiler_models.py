"""The MODEL registry: names resolve to frozen eval-mode models with inputs; typos get hints."""

from __future__ import annotations

import pytest
import torch

from compiler_models import HF_MODELS, loaded
from deos_dsl.compiler import UnknownModelError, build_block_map, resolve_model, trace
from deos_dsl.compiler.models import MODEL_NAMES
from deos_dsl.embedded import default_weights_path


@pytest.mark.parametrize("name", ["embedded", *HF_MODELS])
def test_models_are_frozen_and_run_on_their_inputs(name: str):
    model = loaded(name)
    assert model.name == name and not model.model.training
    assert not any(p.requires_grad for p in model.model.parameters())
    assert model.args or model.kwargs


def test_embedded_says_where_its_weights_came_from():
    source = loaded("embedded").source
    expected = "trained weights from" if default_weights_path().exists() else "random init (no weights file at"
    assert source.startswith(expected) and str(default_weights_path()) in source


@pytest.mark.parametrize(("name", "hint"), [
    ("hf:CLIPVisonModel", "did you mean `hf:CLIPVisionModel`?"),
    ("embeded", "did you mean `embedded`?"),
    ("hf:GPT2", None),
])
def test_unknown_names_get_did_you_mean(name: str, hint: str | None):
    with pytest.raises(UnknownModelError) as caught:
        resolve_model(name)
    assert caught.value.message == f"unknown model `{name}`"
    assert caught.value.hint.endswith("known models: " + ", ".join(MODEL_NAMES))
    assert (hint in caught.value.hint) if hint else caught.value.hint.startswith("known models")


def test_module_factories():
    tiny = resolve_model("module:compiler_models:tiny_stack")
    assert tiny.source == "factory compiler_models:tiny_stack" and not tiny.model.training
    result = build_block_map(trace(tiny.model, tiny.args), tiny.roles, tiny.spans)
    assert [(s.prefix, s.role, len(s.blocks)) for s in result.stacks] == [("layers", "decoder", 2)]
    pair = resolve_model("module:compiler_models:untraceable")
    assert isinstance(pair.args[0], torch.Tensor) and pair.name == "module:compiler_models:untraceable"
    for bad, message in [("module:compiler_models", "bad model name"),
                         ("module:compiler_models:nope", "cannot import"),
                         ("module:no_such_module_xyz:f", "cannot import"),
                         ("module:compiler_models:HF_MODELS", "cannot call"),
                         ("module:compiler_models:raising", "factory `compiler_models:raising` raised RuntimeError: weights missing"),
                         ("module:sys:exit", "factory `sys:exit` raised SystemExit")]:
        with pytest.raises(UnknownModelError, match=message):
            resolve_model(bad)
