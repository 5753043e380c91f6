"""The regime parameters every operator stands for (DESIGN.md 1.1 corners, `vocab.CORNERS`).

Invariant: `regime(op)` returns all five parameters (gamma, tau, theta, rho, nu) of the unified
operator for ANY operator form; a corner's defining values cannot be overridden (validation
reports it), only its free settings (`settings_of`).
"""

from __future__ import annotations

from . import ir
from .vocab import CORNERS, UNIFIED, form_values


def settings_of(form: str) -> frozenset[str]:
    """The settings an operator `form` accepts: a corner's own, every one for `unified`."""
    return frozenset(ir.SETTINGS) if form == UNIFIED else CORNERS[form].settings


def regime(op: ir.Operator) -> dict[str, ir.FixedParam | ir.LearnedParam]:
    """The five regime parameters of `op`: written values first, else the form's values."""
    params: dict[str, ir.FixedParam | ir.LearnedParam] = {}
    for name in ir.REGIME:
        written = getattr(op, name)
        params[name] = written if written is not None else ir.FixedParam(value=ir.Num(value=form_values(op.form)[name]))
    return params
