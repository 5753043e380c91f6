"""Saving and loading the shipped weights (float16 state dict + JSON metadata)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from deos_dsl.errors import WeightsError
from deos_dsl.files import write_atomically, write_text_atomically

from .model import EmbeddedVQAModel, ModelConfig

WEIGHTS_DIR = Path(__file__).parent / "weights"
LLAVA_DIRECTORY = Path(__file__).parent / "llava"  # the shipped HF LLaVA (`llava.py`), a save_pretrained folder
DEFAULT_NAME = "shapes_vqa"
RETRAIN = "reinstall deos for the shipped weights, or retrain them: python -m deos_dsl.embedded.train"


def save_weights(model: EmbeddedVQAModel, path: Path) -> None:
    """Write ``path`` (``.pt``: float16 state dict, ``weights_only``-loadable) and its JSON
    metadata holding the model config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16) for k, v in model.state_dict().items()}
    write_atomically(path, lambda temp: torch.save(state, temp))
    write_metadata(path, {"config": model.config.to_dict()})


def write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` (must include ``"config"``) to the JSON file beside ``path``."""
    write_text_atomically(path.with_suffix(".json"), json.dumps(metadata, indent=2) + "\n")


def load_metadata(path: Path) -> dict[str, Any]:
    """The JSON metadata beside a weights file."""
    meta_path = path.with_suffix(".json")
    try:
        return json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"cannot read weights metadata {meta_path}: {err}", RETRAIN) from err


def load_model(path: Path) -> EmbeddedVQAModel:
    """The model saved at ``path``: float32, eval mode, parameters frozen."""
    cfg = ModelConfig(**load_metadata(path)["config"])
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for missing/corrupt archives
        raise WeightsError(f"cannot load weights {path}: {err}", RETRAIN) from err
    model = EmbeddedVQAModel(cfg)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except (RuntimeError, AttributeError) as err:
        raise WeightsError(f"weights {path} do not match config {cfg}: {err}", RETRAIN) from err
    model.eval().requires_grad_(False)
    return model


def default_weights_path() -> Path:
    """Path of the shipped weights file."""
    return WEIGHTS_DIR / f"{DEFAULT_NAME}.pt"


def load_default_model() -> EmbeddedVQAModel:
    """The shipped, trained model (eval mode, frozen)."""
    return load_model(default_weights_path())
