"""`deos compile`'s checks: everything `emit` and `cost` need, so that a space and model that
compile can be emitted and costed.

`check_space(space, loaded)` binds the space (passes 1-2, the tables `compile` prints), derives
its symbolic cost (`attach_cost`) and evaluates it at the space's own schedule, and runs the
emit route (`compile_emitted`: passes 4-6, the re-trace route where export fixed a length, the
emitted model run once on the example inputs). Only the `.pt2` archive is left to `emit`.
"""

from __future__ import annotations

from dataclasses import dataclass

from deos_dsl.compiler.models import LoadedModel
from deos_dsl.cost import Cost
from deos_dsl.frontend import ir

from .compile import Bound
from .cost import bound_cost
from .emit import Emitted, compile_emitted


@dataclass
class Checked:
    """A space checked on a model: its binding, its cost with the dense and the space's FLOPs per
    example, and the emitted model."""

    bound: Bound
    cost: Cost
    dense_flops: int
    flops: int
    emitted: Emitted


def check_space(space: ir.Space, loaded: LoadedModel) -> Checked:
    """The checks of `deos compile` (module docstring); raises `DeosCompileError` / `SpaceError`."""
    bound, cost, schedule = bound_cost(space, loaded)
    cost = cost.per_example()
    return Checked(bound, cost, cost.dense_flops(), cost.flops(schedule), compile_emitted(space, loaded))
