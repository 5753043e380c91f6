"""The compiler's own kinds of `DeosCompileError` (the model cannot be found, traced or mapped).

Errors about a `.deos` file are `SpaceError`s with positioned diagnostics; errors about the
model have no source position: a one-paragraph message plus a hint saying what the user can do
(`deos_dsl.errors`). Neither ever needs a traceback to be read.
"""

from __future__ import annotations

from deos_dsl.errors import DeosCompileError, first_line


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


class ReducedModelError(DeosCompileError):
    """The model's own code fails on the reduced token stream (an emitted model run, or its
    vision features recounted): it needs the dense count somewhere after a site."""

    def __init__(self, what: str, error: BaseException) -> None:
        super().__init__(f"{what} fails on the reduced tokens: {first_line(error)[:300]}",
                         "when the failing line is the model's own code after a site that needs the dense token "
                         "count (a reshape to a fixed grid: pooling or pixel shuffle before the projector), place "
                         "the site after it, at the projector or in the decoder; otherwise report the model")
