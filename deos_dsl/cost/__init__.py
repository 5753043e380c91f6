"""Symbolic FLOPs cost model (issue 6): per-op sympy formulas, per-block and per-site costs,
dense vs reduced evaluation, a differentiable torch function for the search, reports.

>>> cost, schedule = cost_space(space, resolve_model("hf:Qwen2Model"))
>>> cost.dense_flops(), cost.flops(schedule)          # exact integers
>>> cost.torch_function()({"layers.2@0": torch.tensor(8.0)})   # differentiable in the counts
"""

from .api import cost_space, search_flops
from .formulas import Conventions
from .model import Cost, CostFunction, GroupCost, SiteCost, SitePoint
from .schedule import ScheduleError, default_schedule, load_schedule

__all__ = [
    "Conventions", "Cost", "CostFunction", "GroupCost", "ScheduleError", "SiteCost", "SitePoint", "cost_space",
    "default_schedule", "load_schedule", "search_flops",
]
