"""Real checkpoints: a `save_pretrained` directory, or `hf:ORG/NAME` from the local Hugging Face
cache (offline: nothing is ever downloaded), loaded with its processor through the transformers
Auto classes.

- the model: the class its `config.json` names (`architectures`), else the image-text-to-text,
  causal-LM and base Auto classes in that order; frozen, eval mode, in `dtype`, on `device`,
  with the key-value cache off (a traced forward returns tensors, not a cache object);
- the processor: `AutoProcessor`, else a tokenizer and an image processor loaded alone (a
  processor that also wants a video processor, which needs torchvision, still loads);
- the example inputs: two examples of a grey image and a short prompt through the processor
  (`deos_dsl.data.ChatEncoder`), what `deos compile` / `cost` / `emit` trace when no data is
  given.
A directory that cannot be loaded is an `UnknownModelError` naming it and what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from deos_dsl.data import ChatEncoder, Example

from .errors import UnknownModelError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXAMPLE_PROMPT = "Describe the image."
EXAMPLE_BATCH = 2


def is_checkpoint(name: str) -> bool:
    """`hf:ORG/NAME`, or a path to a directory (`./x`, `/x`, or an existing directory)."""
    if name.startswith("hf:"):
        return "/" in name
    return name.startswith((".", "/", "~")) or Path(name).is_dir()


def checkpoint_directory(name: str) -> Path:
    """The local directory of checkpoint `name`; `hf:ORG/NAME` is looked up in the HF cache only."""
    if not name.startswith("hf:"):
        directory = Path(name).expanduser()
        if not directory.is_dir():
            raise UnknownModelError(f"no checkpoint directory {directory}", "pass a directory written by `save_pretrained`")
        return directory
    from huggingface_hub import snapshot_download  # transformers' own dependency, needed only here
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = name.removeprefix("hf:")
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise UnknownModelError(f"`{repo}` is not in the local Hugging Face cache (deos never downloads)",
                                f"download it where there is network (`huggingface-cli download {repo}`), or pass its "
                                "directory") from None


def _model_class(transformers: Any, config: Any) -> list[Any]:
    named = [getattr(transformers, arch) for arch in (getattr(config, "architectures", None) or [])
             if hasattr(transformers, arch)]
    return named + [transformers.AutoModelForImageTextToText, transformers.AutoModelForCausalLM, transformers.AutoModel]


def _cache_off(model: nn.Module) -> None:
    """`use_cache = False` in the model's config and its sub-configs (a traced forward then
    returns tensors, no cache object)."""
    configs = [model.config]
    while configs:
        config = configs.pop()
        if hasattr(config, "use_cache"):
            config.use_cache = False
        configs += [sub for key in getattr(config, "sub_configs", {}) if (sub := getattr(config, key, None)) is not None]


def _processor(transformers: Any, directory: Path) -> Any:
    try:
        return transformers.AutoProcessor.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, ImportError, TypeError):
        pass
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        images = transformers.AutoImageProcessor.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, ImportError, TypeError) as error:
        raise UnknownModelError(f"no processor in {directory} ({type(error).__name__}: {str(error).splitlines()[0]})",
                                "save the processor beside the model (`processor.save_pretrained(directory)`)") from None
    return _Pair(tokenizer, images)


class _Pair:
    """A tokenizer and an image processor loaded alone, called like a processor. Where the image
    processor returns grid sizes (`image_grid_thw`, Qwen2-VL's), each image's placeholder is
    expanded to its `t * h * w / merge_size^2` image tokens and `mm_token_type_ids` marks them
    (1), as the family's own processor does."""

    def __init__(self, tokenizer: Any, image_processor: Any) -> None:
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.image_token = getattr(tokenizer, "image_token", None)
        self.chat_template = getattr(tokenizer, "chat_template", None)

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.apply_chat_template(*args, **kwargs)

    def _expanded(self, text: list[str], grids: torch.Tensor) -> list[str]:
        """`text` with the k-th image placeholder (over all texts, in order) repeated for image k's tokens."""
        merge = int(getattr(self.image_processor, "merge_size", 1)) ** 2
        counts = iter((grids.prod(dim=-1) // merge).tolist())
        expanded = []
        for one in text:
            first, *rest = one.split(self.image_token)
            expanded.append(first + "".join(self.image_token * next(counts) + piece for piece in rest))
        return expanded

    def __call__(self, text: list[str], images: list[Image.Image], **kwargs: Any) -> dict[str, Any]:
        pixels = dict(self.image_processor(images, return_tensors="pt"))
        grids = pixels.get("image_grid_thw")
        if grids is None or self.image_token is None:
            return {**self.tokenizer(text, **kwargs), **pixels}
        encoded = {**self.tokenizer(self._expanded(text, grids), **kwargs), **pixels}
        image = self.tokenizer.convert_tokens_to_ids(self.image_token)
        encoded["mm_token_type_ids"] = (torch.as_tensor(encoded["input_ids"]) == image).long()
        return encoded


def load_checkpoint(name: str, dtype: str = "float32", device: str = "cpu") -> tuple[nn.Module, Any, dict[str, Any], str]:
    """(model, processor, example inputs, source) of checkpoint `name` (module docstring)."""
    import transformers  # a real checkpoint needs transformers; the shipped model does not

    directory = checkpoint_directory(name)
    if not (directory / "config.json").is_file():
        raise UnknownModelError(f"{directory} has no config.json", "pass a directory written by `save_pretrained`")
    if dtype not in DTYPES:
        raise UnknownModelError(f"unknown dtype `{dtype}`", f"use one of {', '.join(DTYPES)}")
    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise UnknownModelError(f"cannot read {directory / 'config.json'}: {str(error).splitlines()[0]}",
                                "check that transformers knows the architecture (upgrade it?)") from None
    failures = []
    for cls in _model_class(transformers, config):
        try:
            model = cls.from_pretrained(directory, dtype=DTYPES[dtype], local_files_only=True)
            break
        except (OSError, ValueError, KeyError, TypeError) as error:
            failures.append(f"{getattr(cls, '__name__', cls)}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
    else:
        raise UnknownModelError(f"cannot load the model in {directory}: " + "; ".join(failures[:3]),
                                "check the weights files (model.safetensors) beside config.json")
    _cache_off(model)
    model = model.to(device).eval().requires_grad_(False)
    processor = _processor(transformers, directory)
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    example = ChatEncoder(processor, [Example((grey,), EXAMPLE_PROMPT)] * EXAMPLE_BATCH).batch(list(range(EXAMPLE_BATCH)))
    inputs = {key: value.to(device) for key, value in example.kwargs.items()}
    return model, processor, inputs, f"checkpoint {directory} ({dtype}, {device})"
