"""User datasets: a JSONL file, one example per line, checked whole before any compute.

    {"image": "images/0001.png", "prompt": "what colour is the car ?", "answer": "red"}

- `image`: a path relative to the JSONL file (or absolute), or a list of paths (several images
  per example, where the model takes them); every image must open as an image;
- `prompt`: the user's text; the task templates it (the processor's chat template, else
  `DEFAULT_TEMPLATE`) and places the image placeholders;
- `answer` (optional): the expected answer text (teacher-forced loss, accuracy);
- `family` (optional): a group name; accuracy is also reported per family.
Any other key, a missing image, a file that is no image, an empty prompt or answer is a
`DataError` naming `file:line` (every bad line at once, up to `MAX_REPORTED`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from deos_dsl.errors import DataError

KEYS = ("image", "prompt", "answer", "family")
MAX_REPORTED = 20
HINT = ('write one JSON object per line: {"image": PATH, "prompt": TEXT, "answer": TEXT (optional), '
        '"family": NAME (optional)}; image paths are relative to the JSONL file')


@dataclass(frozen=True)
class Example:
    """One example of a dataset: its image files, prompt, answer and family, and where it was read."""

    images: tuple[Path | Image.Image, ...]  # files; in-memory images for examples made in code
    prompt: str
    answer: str | None = None
    family: str | None = None
    line: int = 0
    file: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _text(record: dict[str, Any], key: str, required: bool) -> str | None:
    value = record.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"`{key}` must be a non-empty string" + ("" if required else " when given"))
    return value


def _images(record: dict[str, Any], folder: Path) -> tuple[Path, ...]:
    value = record.get("image")
    paths = value if isinstance(value, list) else [value]
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise ValueError("`image` must be a path or a list of paths")
    found = []
    for text in paths:
        path = (folder / text).resolve()
        try:
            with Image.open(path) as image:
                image.verify()
        except FileNotFoundError:
            raise ValueError(f"image {text} not found (looked for {path})") from None
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"image {text} cannot be read as an image ({type(error).__name__})") from None
        found.append(path)
    return tuple(found)


def parse_line(text: str, line: int, file: str, folder: Path) -> Example:
    """One JSONL line as an `Example`; raises `ValueError` saying what is wrong with it."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"a line must be a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(f'`{k}`' for k in unknown)} (keys: {', '.join(KEYS)})")
    prompt = _text(record, "prompt", required=True)
    assert prompt is not None
    return Example(_images(record, folder), prompt, _text(record, "answer", False), _text(record, "family", False),
                   line, file)


def read_jsonl(path: Path, limit: int | None = None) -> list[Example]:
    """Every example of the JSONL file `path` (the first `limit` ones); raises `DataError`
    naming each bad line (module docstring)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}", HINT) from None
    examples, problems = [], []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        if limit is not None and len(examples) >= limit:
            break
        try:
            examples.append(parse_line(text, number, str(path), path.parent))
        except ValueError as error:
            problems.append(f"{path}:{number}: {error}")
    if problems:
        shown = problems[:MAX_REPORTED] + ([f"... and {len(problems) - MAX_REPORTED} more"] if len(problems) > MAX_REPORTED else [])
        raise DataError(f"{len(problems)} bad example(s) in {path}:\n" + "\n".join(f"  {p}" for p in shown), HINT)
    if not examples:
        raise DataError(f"{path} holds no example", HINT)
    return examples
