"""deos_dsl.tasks: the task protocol (`base.Task`) and the `--data` specs that make one.

`make_task(data, loaded)`:
- `embedded`, `embedded:shapes_vqa`, `embedded:shapes_vqa[:N]`, `embedded{count,compare}` (only
  those question families; `embedded:shapes_vqa{FAMILY,...}[:N]`): the procedural benchmark, through
  the model's processor (a checkpoint such as `embedded:llava`: `ProceduralChatSource`), or on
  the shipped classifier (or a model with its inputs and answers: `check_shapes_vqa`);
- `FILE.jsonl` (or a directory holding `data.jsonl`): a user dataset (`deos_dsl.data`), read and
  checked whole; through the model's processor (a checkpoint: `LanguageTask`), or the shipped
  model's own encoding (`ClassifierTask`);
- `module:pkg.mod:factory`: `factory()` returns a list of `deos_dsl.data.Example` (encoded as a
  JSONL dataset is) or a `Task` itself.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch

from deos_dsl.compiler.models import LoadedModel
from deos_dsl.data import ChatEncoder, Example, VQAEncoder, read_jsonl
from deos_dsl.embedded.vqa import ANSWERS, FAMILIES, IMAGE_SIZE, QUESTION_LEN
from deos_dsl.errors import DataError

from .base import ANSWER_LOSSES, ExampleSource, Source, Task
from .classify import ClassifierTask, ProceduralSource
from .language import LanguageTask, ProceduralChatSource

__all__ = ["ANSWER_LOSSES", "ClassifierTask", "ExampleSource", "LanguageTask", "ProceduralChatSource", "ProceduralSource", "Source", "Task",
           "check_shapes_vqa", "make_task"]

EMBEDDED = re.compile(r"embedded(?::shapes_vqa)?(?:\{([^}]*)\})?(?:\[:(\d+)\])?\Z")
FORMS = ("`embedded` (or `embedded:shapes_vqa{FAMILY,...}[:N]`), a JSONL file (or a directory holding data.jsonl), "
         "or `module:pkg.mod:factory`")


def check_shapes_vqa(loaded: LoadedModel, data: str) -> None:
    """Raise `DataError` unless `loaded` takes `(pixels [B, 3, 96, 96], question [B, 12])` and
    answers logits over the 14 shapes-VQA answers (the shipped model's interface)."""
    hint = f"data `{data}` needs `--model embedded` (or a model with the same inputs and answers)"
    args = loaded.args
    fits = (not loaded.kwargs and len(args) == 2 and all(isinstance(a, torch.Tensor) for a in args)
            and args[0].is_floating_point() and tuple(args[0].shape[1:]) == (3, IMAGE_SIZE, IMAGE_SIZE)
            and not args[1].is_floating_point() and tuple(args[1].shape[1:]) == (QUESTION_LEN,))
    if not fits:
        raise DataError(f"model `{loaded.name}` does not take shapes-VQA inputs (pixels [B, 3, {IMAGE_SIZE}, "
                        f"{IMAGE_SIZE}], question [B, {QUESTION_LEN}])", hint)
    with torch.no_grad():
        out = loaded.model(*args)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (args[0].shape[0], len(ANSWERS)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(f"model `{loaded.name}` answers with {shape}, not logits over the {len(ANSWERS)} "
                        "shapes-VQA answers", hint)


def _families(listed: str | None, data: str) -> tuple[str, ...] | None:
    """The question families `{a,b}` of an embedded data spec selects (None: every family)."""
    if listed is None:
        return None
    names = tuple(name.strip() for name in listed.split(",")) if listed.strip() else ()
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        problem = f"unknown question family `{unknown[0]}`" if unknown else "no question family in `{}`"
        raise DataError(f"data `{data}`: {problem}", f"list some of {', '.join(FAMILIES)}, e.g. `embedded{{count,compare}}`")
    return tuple(dict.fromkeys(names))


def _from_factory(data: str) -> list[Example] | Task:
    spec = data.removeprefix("module:")
    module_name, _, attr = spec.partition(":")
    try:
        made = getattr(importlib.import_module(module_name), attr)()
    except (ImportError, AttributeError, ValueError) as error:
        raise DataError(f"cannot make data `{data}`: {type(error).__name__}: {error}",
                        "write `module:package.module:factory`, a factory returning a list of Example or a Task") from None
    if isinstance(made, Task) or (isinstance(made, list) and made and all(isinstance(e, Example) for e in made)):
        return made
    raise DataError(f"data factory `{spec}` returned {type(made).__name__}", "return a non-empty list of Example, or a Task")


def _examples_task(examples: list[Example], loaded: LoadedModel, data: str) -> Task:
    answered = all(example.answer is not None for example in examples)
    if loaded.processor is not None:
        return LanguageTask(ExampleSource(ChatEncoder(loaded.processor, examples, prelude=loaded.prelude), answered), data)
    check_shapes_vqa(loaded, data)
    return ClassifierTask(ExampleSource(VQAEncoder(examples), answered), data)


def make_task(data: str, loaded: LoadedModel) -> Task:
    """The task of `--data data` on `loaded` (module docstring); raises `DataError`."""
    match = EMBEDDED.match(data)
    if match is not None:
        only = _families(match.group(1), data)
        limit = int(match.group(2)) if match.group(2) else None
        if limit == 0:
            raise DataError(f"data `{data}` selects no example", "N in `[:N]` must be positive")
        if loaded.processor is not None:
            return LanguageTask(ProceduralChatSource(loaded.processor, limit, loaded.prelude, only), data)
        check_shapes_vqa(loaded, data)
        return ClassifierTask(ProceduralSource(limit, only), data)
    if data.startswith("module:"):
        made = _from_factory(data)
        return made if isinstance(made, Task) else _examples_task(made, loaded, data)
    path = Path(data)
    if path.is_dir():
        path = path / "data.jsonl"
    if not path.is_file():
        raise DataError(f"unknown data `{data}`: no such file", f"use {FORMS}")
    return _examples_task(read_jsonl(path), loaded, data)
