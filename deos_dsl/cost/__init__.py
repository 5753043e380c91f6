"""Symbolic FLOPs cost model: per-op sympy formulas, per-block and per-site costs, dense vs
reduced evaluation, a differentiable torch function for the search, reports. Running it on a
space and model is the pipeline's (`deos_dsl.pipeline.cost_space`, pass `attach_cost`).

>>> cost, schedule = cost_space(space, resolve_model("hf:Qwen2Model"))
>>> cost.dense_flops(), cost.flops(schedule)          # exact integers
>>> cost.torch_function()({"layers.2@0": torch.tensor(8.0)})   # differentiable in the counts
"""

from .formulas import Conventions
from .model import Cost, CostFunction, GroupCost, SiteCost, SitePoint
from .schedule import ScheduleError, default_schedule, load_schedule

__all__ = [
    "Conventions", "Cost", "CostFunction", "GroupCost", "ScheduleError", "SiteCost", "SitePoint",
    "default_schedule", "load_schedule",
]
