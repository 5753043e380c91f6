"""The compiler's own kinds of `DeosCompileError` (the model cannot be found, traced or mapped).

Errors about a `.deos` file are `SpaceError`s with positioned diagnostics; errors about the
model have no source position: a one-paragraph message plus a hint saying what the user can do
(`deos_dsl.errors`). Neither ever needs a traceback to be read.
"""

from __future__ import annotations

from deos_dsl.errors import DeosCompileError


class UnknownModelError(DeosCompileError):
    """A MODEL name that the registry cannot resolve."""


class UntraceableModelError(DeosCompileError):
    """Every tracer failed; `attempts` holds (tracer, first line of its error) in order."""

    def __init__(self, attempts: list[tuple[str, str]], hint: str) -> None:
        self.attempts = attempts
        lines = "\n".join(f"  - {tracer}: {error}" for tracer, error in attempts)
        super().__init__(f"cannot trace the model; tried {len(attempts)} tracer(s):\n{lines}", hint)


class BlockMapError(DeosCompileError):
    """The traced graph has no recognisable transformer blocks or residual stream."""
