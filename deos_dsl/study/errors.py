"""The study's user-facing error: a space that is no baseline, or a budget a baseline cannot reach."""

from __future__ import annotations

from deos_dsl.compiler.errors import DeosCompileError


class StudyError(DeosCompileError):
    """A study failure that is the user's to fix: `message` says what, `hint` says how
    (a space that learns its schedule, a budget out of a baseline's reach)."""
