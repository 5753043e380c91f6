"""Model-side compile errors (the model cannot be found, traced or mapped).

Errors about a `.deos` file are `deos_dsl.frontend.DeosError` with positioned diagnostics;
errors about the model have no source position and are `DeosCompileError`: a one-paragraph
message plus a hint saying what the user can do. Neither ever needs a traceback to be read.
"""

from __future__ import annotations


class DeosCompileError(Exception):
    """A compile failure that is the user's to fix: `message` says what, `hint` says how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message, self.hint = message, hint
        super().__init__(message if hint is None else f"{message}\nhint: {hint}")


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
