"""The one error root: every failure deos reports to a user is a `DeosError`.

A `DeosError` says what went wrong (`message`) and what the user can do (`hint`); an error
about a `.deos` file also carries its positioned `Diagnostic`s (`file:line:col`, caret, hint).
The CLI turns any `DeosError` into that output in one place (`deos_dsl.cli.report_error`);
anything else that escapes is a bug. One subclass per stage, so a caller can tell them apart:

- `SpaceError`: the front end (parse, resolve, validate a space; bind its sites to a model);
- `DeosCompileError`: the model (load, trace, map its blocks, emit);
- `DataError`: a dataset (a JSONL line, an image, a prompt the model's processor cannot take);
- `CostError`: the cost model (a schedule that does not fit the space);
- `SearchError`: the search (budgets, data, checkpoints, infeasible constraints);
- `StudyError`: the baseline study (a space that is no baseline, a budget out of reach);
- `WeightsError`: shipped or saved weights that cannot be read;
- `FileAccessError`: the machine refused a read or a write (permissions, a full disk, a path
  that is missing or of the wrong kind): the environment's error, not the input's nor deos's.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Iterable, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Diagnostic:
    """One positioned message. Lines and columns are 1-based; `end_col` is exclusive."""

    file: str
    line: int
    col: int
    message: str
    end_line: int | None = None
    end_col: int | None = None
    severity: Severity = "error"
    hint: str | None = None
    source_line: str | None = field(default=None, compare=False)

    def location(self) -> str:
        """`file:line:col`, the prefix of every rendered diagnostic."""
        return f"{self.file}:{self.line}:{self.col}"

    def __str__(self) -> str:
        text = f"{self.location()}: {self.severity}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class DeosError(Exception):
    """A failure that is the user's to fix: `message` says what, `hint` says how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message, self.hint = message, hint
        super().__init__(message if hint is None else f"{message}\nhint: {hint}")

    @property
    def diagnostics(self) -> list[Diagnostic]:
        """Positioned messages about a `.deos` file (none for the other stages)."""
        return []


class SpaceError(DeosError):
    """Raised with ALL the diagnostics found in one unit of work (a file and its imports)."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self._diagnostics = sorted(dict.fromkeys(diagnostics), key=lambda d: (d.file, d.line, d.col, d.message))
        super().__init__("\n".join(str(d) for d in self._diagnostics))

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return self._diagnostics


class DeosCompileError(DeosError):
    """The model cannot be loaded, traced, mapped or emitted as the space asks."""


class DataError(DeosError):
    """A dataset the task cannot use: `file:line: problem` for each bad example found."""


class CostError(DeosError):
    """The cost model cannot evaluate what it was given (e.g. a plan of another space)."""


class SearchError(DeosError):
    """Bad search input found before any compute, or an infeasible result."""


class StudyError(DeosError):
    """A space that is no baseline, or a budget out of a baseline's reach."""


class WeightsError(DeosError):
    """Weights (or their metadata) that cannot be read or do not fit their model."""


class FileAccessError(DeosError):
    """An `OSError` of the environment, told as what failed on which path and what to do."""

    HINTS = {
        errno.ENOSPC: "free some disk space, or write somewhere else",
        errno.EDQUOT: "free some of your disk quota, or write somewhere else",
        errno.EACCES: "check the path's permissions, or write somewhere else",
        errno.EPERM: "check the path's permissions, or write somewhere else",
        errno.EROFS: "the file system is read-only: write somewhere else",
        errno.ENOENT: "check that the path and its folders exist",
        errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
        errno.EISDIR: "the path is a folder: name a file",
        errno.EEXIST: "choose a new path, or remove the existing one",
    }

    @classmethod
    def of(cls, error: OSError) -> FileAccessError:
        """The user-facing form of `error` (its path, its reason, a hint by its errno)."""
        where = f": {error.filename}" if error.filename is not None else ""
        reason = error.strerror or type(error).__name__
        return cls(f"{reason}{where}", cls.HINTS.get(error.errno or 0, "check the path, its permissions and the free disk space"))


def first_line(error: BaseException) -> str:
    """`Type: first non-empty line of the message` (what an attempt list shows)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
