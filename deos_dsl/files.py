"""Atomic file replacement: readers see the old file or the new one, never a half-written one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temp)` on a temporary file beside `path`, then rename it onto `path`.

    An existing file keeps its permission bits; on any failure the temporary file is removed
    and `path` is left as it was.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temp)
        if path.exists():
            shutil.copymode(path, temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` (UTF-8), atomically (`write_atomically`)."""
    write_atomically(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def write_directory_atomically(out: Path, fill: Callable[[Path], None]) -> None:
    """Create the NEW directory `out` whole: `fill(temp)` writes into a temporary sibling, which
    is renamed onto `out` at the end; on any failure it is removed and `out` never appears."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        fill(temp)
        temp.rename(out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
