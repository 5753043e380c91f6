"""The cost of a space on a model, and the search's differentiable FLOPs.

`cost_space(space, loaded)` binds the space on the model (`bind_model`: trace, block map,
bind_sites, insert_scores, so that each site's score is costed) and runs `attach_cost`; it
returns the `Cost` and the space's own schedule. `search_flops(bound)` costs a relaxed
search graph and returns its `CostFunction` (the FLOPs per example at the reducible counts
leaving each site, `dense` the dense model's).
"""

from __future__ import annotations

from deos_dsl.compiler.models import LoadedModel
from deos_dsl.cost import Conventions, Cost, CostFunction, SitePoint, default_schedule
from deos_dsl.frontend import ir

from .compile import Bound, attach_cost, bind_model


def bound_cost(space: ir.Space, loaded: LoadedModel,
               conventions: Conventions = Conventions()) -> tuple[Bound, Cost, dict[str, SitePoint]]:
    """`(binding, cost, default schedule)` of `space` on `loaded`; raises `DeosCompileError` /
    `SpaceError`."""
    bound = bind_model(space, loaded)
    cost = attach_cost(bound, conventions, loaded.name)
    return bound, cost, default_schedule(cost, bound.modules)


def cost_space(space: ir.Space, loaded: LoadedModel,
               conventions: Conventions = Conventions()) -> tuple[Cost, dict[str, SitePoint]]:
    """`(cost, default schedule)` of `space` on `loaded` (module docstring); raises
    `DeosCompileError` / `SpaceError` as `deos compile` does."""
    _, cost, schedule = bound_cost(space, loaded, conventions)
    return cost, schedule


def search_flops(bound: Bound) -> CostFunction:
    """The reduced FLOPs PER EXAMPLE of a relaxed search graph, as a torch function of the
    leaving counts (a FLOPs budget does not depend on the batch a search runs at)."""
    return attach_cost(bound).per_example().torch_function()
