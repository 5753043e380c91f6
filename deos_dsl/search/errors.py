"""The search's user-facing error: bad input found before any compute, or an infeasible result."""

from __future__ import annotations

from deos_dsl.compiler.errors import DeosCompileError


class SearchError(DeosCompileError):
    """A search failure that is the user's to fix: `message` says what, `hint` says how
    (bad budget, data/model mismatch, missing or corrupt checkpoint, infeasible constraints)."""
