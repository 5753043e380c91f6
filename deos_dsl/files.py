"""Atomic file replacement: readers see the old file or the new one, never a half-written one.

Temporary names carry the writer's process id (`.NAME.PID.tmp`, `.NAME.PID.XXXX.tmp`); a writer
killed outright (SIGKILL, power loss) cannot clean up, so the next write beside the same
target removes the leftovers of processes that no longer run.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable


TEMPORARY_TAIL = re.compile(r"(\d+)(?:\.[a-z0-9_]{8})?\.tmp")  # PID.tmp (a file) or PID.XXXXXXXX.tmp (mkdtemp)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporary siblings of `target` left by writers that no longer run; returns them."""
    removed = []
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        match = TEMPORARY_TAIL.fullmatch(leftover.name[len(target.name) + 2:])
        if match and int(match[1]) != os.getpid() and not _running(int(match[1])):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temp)` on a temporary file beside `path`, then rename it onto `path`.

    A symlink is written through (its target changes, the link stays); an existing file keeps
    its permission bits; on any failure the temporary file is removed and `path` is left as it was.
    """
    path = Path(os.path.realpath(path))
    remove_stale_temporaries(path)
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
    is renamed onto `out` at the end; on any failure it is removed and `out` never appears.
    An `OSError` names the path under `out` it was about, not the temporary one."""
    if out.parent.exists() and not out.parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out.parent))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        temp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp"))
    except OSError as error:
        raise type(error)(error.errno, error.strerror, str(out)) from error
    try:
        fill(temp)
        temp.rename(out)
    except OSError as error:
        shutil.rmtree(temp, ignore_errors=True)
        named = str(error.filename).replace(str(temp), str(out)) if error.filename is not None else None
        raise type(error)(error.errno, error.strerror, named) from error
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
