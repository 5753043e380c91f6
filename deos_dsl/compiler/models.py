"""The MODEL registry: names -> a frozen model plus example inputs, with no downloads ever.

Names:
- `embedded:llava`: the shipped HF LLaVA (`deos_dsl/embedded/llava/`, a checkpoint with its
  processor; the realistic default);
- `embedded`: the shipped small LLaVA-style classifier (trained weights when the weights file exists,
  otherwise a seeded random init with the same config; `LoadedModel.source` says which);
- `hf:<Architecture>`: a TINY random-initialised transformers model whose config is built in
  code (`tiny_models.TINY_MODELS`), for conformance;
- a checkpoint: a `save_pretrained` directory (`./ckpt`, `/models/llava`) or `hf:ORG/NAME` from
  the local Hugging Face cache, with its processor (`checkpoints.py`; `dtype`, `device`);
- `module:pkg.mod:factory`: a user factory; `factory()` returns a `LoadedModel`, or a tuple
  `(model, args)` or `(model, args, kwargs)` of the model and its example inputs.

Every model is returned in eval mode with parameters frozen.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from deos_dsl.embedded import LLAVA_DIRECTORY, EmbeddedVQAModel, ModelConfig, default_weights_path, load_default_model
from deos_dsl.errors import first_line
from deos_dsl.frontend.diagnostics import suggest

from .checkpoints import is_checkpoint, load_checkpoint
from .errors import UnknownModelError
from .prelude import split_at_language_model, split_family
from .tiny_models import BATCH, TINY_MODELS

Span = tuple[int, int]

@dataclass
class LoadedModel:
    """A model ready to trace: `model(*args, **kwargs)` runs it on the example inputs.

    `spans` maps a role to the reducible token span `[start, end)` of its stream when it cannot
    be inferred from the graph; `roles` maps a role to a module-path prefix (an override).
    `prelude` (a family split at its language model, `prelude.py`) maps the processor's inputs
    to `model`'s: `model` is then the language model and its head, `kwargs` already mapped.
    """

    name: str
    model: nn.Module
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    spans: dict[str, Span] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    processor: Any = None  # a checkpoint's processor (tokenizer, image processor, chat template)
    prelude: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def with_batch(self, size: int) -> LoadedModel:
        """The same model with `size` example rows (its rows taken in turn: `row i = i mod B`),
        for programs whose batch size the example inputs fix."""
        rows = next(value.shape[0] for value in (*self.args, *self.kwargs.values()) if isinstance(value, torch.Tensor))
        index = torch.arange(size) % rows

        def take(value: Any) -> Any:
            return value[index] if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows else value
        return replace(self, args=tuple(take(value) for value in self.args),
                       kwargs={name: take(value) for name, value in self.kwargs.items()})


def split(loaded: LoadedModel) -> LoadedModel:
    """`loaded` split at its language model when its family is one of `prelude.SPLIT_FAMILIES`."""
    if not split_family(loaded.model):
        return loaded
    head, prelude, prepared = split_at_language_model(loaded.model, loaded.kwargs)
    source = f"{loaded.source}; split at the language model (its vision tower runs before the traced graph)"
    return replace(loaded, model=head, kwargs=prepared, prelude=prelude, source=source)


def _frozen(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


def _embedded() -> LoadedModel:
    path = default_weights_path()
    if path.exists():
        model, source = load_default_model(), f"trained weights from {path}"
    else:
        torch.manual_seed(0)
        model, source = _frozen(EmbeddedVQAModel(ModelConfig())), f"random init (no weights file at {path})"
    cfg = model.config
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(BATCH, 3, cfg.image_size, cfg.image_size, generator=generator)
    question = torch.randint(0, cfg.vocab_size, (BATCH, cfg.question_len), generator=generator)
    return LoadedModel("embedded", model, (pixels, question), source=source)


def _tiny(name: str) -> LoadedModel:
    """The tiny random-initialised `hf:<name>` (`tiny_models.TINY_MODELS`), seeded."""
    import transformers  # only a tiny HF model needs it

    tiny = TINY_MODELS[name]
    torch.manual_seed(0)
    model = _frozen(tiny.build(transformers))
    return split(LoadedModel(f"hf:{name}", model, kwargs=tiny.inputs(model), source="random init (tiny config, no download)",
                             spans=dict(tiny.spans)))


LLAVA = "embedded:llava"
MODEL_NAMES = (LLAVA, "embedded", *(f"hf:{name}" for name in TINY_MODELS), "module:pkg.mod:factory", "DIR", "hf:ORG/NAME")


def _from_factory(name: str) -> LoadedModel:
    spec = name.removeprefix("module:")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UnknownModelError(f"bad model name `{name}`", "write `module:package.module:factory`")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise UnknownModelError(f"cannot import `{spec}`: {error}", "check the module path and the factory name") from None
    except (Exception, SystemExit) as error:  # the user's module failed while importing: its error, not deos's
        raise UnknownModelError(f"importing `{module_name}` raised {first_line(error)[:300]}",
                                f"run `python -c 'import {module_name}'` to see where") from None
    if not callable(factory):
        raise UnknownModelError(f"cannot call `{spec}`: it is a {type(factory).__name__}", "name a factory function")
    try:
        made = factory()
    except (Exception, SystemExit) as error:  # user code: report it as the model's error, with what it said
        raise UnknownModelError(f"factory `{spec}` raised {first_line(error)[:300]}",
                                "fix the factory; call it alone in Python to see its traceback") from None
    if isinstance(made, LoadedModel):
        loaded = made
    elif isinstance(made, tuple) and len(made) in (2, 3) and isinstance(made[0], nn.Module):
        loaded = LoadedModel(name, made[0], tuple(made[1]), dict(made[2]) if len(made) == 3 else {})
    else:
        raise UnknownModelError(f"factory `{spec}` returned {type(made).__name__}",
                                "return a LoadedModel or a tuple (model, args) / (model, args, kwargs)")
    loaded.source = loaded.source or f"factory {spec}"
    _frozen(loaded.model)
    return loaded


def resolved_dtype(dtype: str, device: str) -> str:
    """A checkpoint's dtype: `auto` is bfloat16 on a CUDA device (a 7B model's frozen weights in
    half the memory), float32 elsewhere; any other name as given."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if str(device).startswith("cuda") else "float32"


def resolve_model(name: str, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """The model called `name` (see the module docstring; `dtype` (`resolved_dtype`) and `device`
    apply to a checkpoint); raises `UnknownModelError`."""
    dtype = resolved_dtype(dtype, device)
    if name == "embedded":
        return _embedded()
    if name == LLAVA:
        if not (LLAVA_DIRECTORY / "model.safetensors").is_file():
            raise UnknownModelError(f"the shipped model is missing from {LLAVA_DIRECTORY}",
                                    "reinstall deos, or retrain it: python -m deos_dsl.embedded.train_hf --seed 0")
        model, processor, inputs, source = load_checkpoint(str(LLAVA_DIRECTORY), dtype, device)
        return LoadedModel(name, model, kwargs=inputs, source=f"shipped {source}", processor=processor)
    if name.startswith("module:"):
        return _from_factory(name)
    if is_checkpoint(name):
        model, processor, inputs, source = load_checkpoint(name, dtype, device)
        return split(LoadedModel(name, model, kwargs=inputs, source=source, processor=processor))
    if not (name.startswith("hf:") and name.removeprefix("hf:") in TINY_MODELS):
        known = ", ".join(MODEL_NAMES)
        hint = suggest(name, MODEL_NAMES[:-3])
        raise UnknownModelError(f"unknown model `{name}`", f"{hint + ' ' if hint else ''}known models: {known}")
    return _tiny(name.removeprefix("hf:"))
