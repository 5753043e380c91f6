"""The regime parameters every operator stands for (DESIGN.md 1.1 corners).

Invariant: `regime(op)` returns all five parameters (gamma, tau, theta, rho, nu) of the unified
operator for ANY operator form; a corner's defining values cannot be overridden (validation
reports it), only its free settings (`CORNER_SETTINGS`).
"""

from __future__ import annotations

import math

from . import ir

INF = math.inf

# Defining values of each corner (tau = 0 is the sharp-merge limit, tau = inf uniform).
CORNER_VALUES: dict[str, dict[str, float]] = {
    "prune": {"gamma": 0.0, "tau": INF, "theta": 0.0, "rho": 0.0, "nu": 1.0},
    "merge": {"gamma": 1.0, "tau": 0.0, "theta": 0.0, "rho": 0.0, "nu": 1.0},
    "pool": {"gamma": 1.0, "tau": INF, "theta": 0.0, "rho": 0.0, "nu": 1.0},
    "reweight": {"gamma": 0.0, "tau": INF, "theta": 0.0, "rho": 1.0, "nu": 1.0},
    "unified": {"gamma": 0.0, "tau": 1.0, "theta": 0.0, "rho": 0.0, "nu": 1.0},
}

# Settings a corner accepts in `corner(name: value, ...)`; `unified` accepts every setting.
CORNER_SETTINGS: dict[str, frozenset[str]] = {
    "prune": frozenset({"theta"}),
    "merge": frozenset({"theta", "proportional", "into", "affinity"}),
    "pool": frozenset({"window", "width", "proportional", "into", "affinity"}),
    "reweight": frozenset({"theta", "rho"}),
    "unified": frozenset(ir.SETTINGS),
}


def regime(op: ir.Operator) -> dict[str, ir.FixedParam | ir.LearnedParam]:
    """The five regime parameters of `op`: written values first, else the form's values."""
    params: dict[str, ir.FixedParam | ir.LearnedParam] = {}
    for name in ir.REGIME:
        written = getattr(op, name)
        params[name] = written if written is not None else ir.FixedParam(value=ir.Num(value=CORNER_VALUES[op.form][name]))
    return params
