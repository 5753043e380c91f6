"""The operator pattern of an emitted schedule: which regime each active site runs, per layer.

A site's regime is named by its corner (`vocab.CORNERS`: `prune`, `merge`, `pool`, `reweight`), or
`mix` when it sits between them: a soft transfer `0 < gamma < 1` (or a corner-free tau /
rho combination). A schedule is a HYBRID when some active site redistributes softly
(`0 < gamma < 1`), the regime no hand-designed method uses.
"""

from __future__ import annotations

import math
from typing import Any

from deos_dsl.compiler.hard_site import SitePlan
from deos_dsl.compiler.sites import short_site
from deos_dsl.frontend.vocab import MIX, OFF, corner_of

def regime_name(plan: SitePlan) -> str:
    """The corner of `plan`'s regime (`vocab.CORNERS`), `mix` off the corners."""
    return corner_of({"gamma": plan.gamma, "tau": plan.tau, "rho": plan.rho}) or MIX


def soft_transfer(plan: SitePlan) -> bool:
    return plan.active and 0.0 < plan.gamma < 1.0


def site_pattern(plan: SitePlan) -> dict[str, Any]:
    """JSON-ready decision of one site: short name, regime, tokens entering / kept / leaving, gamma, tau."""
    return {"site": short_site(plan.name), "active": plan.active, "regime": regime_name(plan) if plan.active else OFF,
            "entering": plan.entering, "keep": plan.keep, "leaving": plan.leaving, "gamma": plan.gamma,
            "tau": "inf" if math.isinf(plan.tau) else plan.tau, "rho": plan.rho}


def pattern_text(sites: list[dict[str, Any]]) -> str:
    """One line for a table: `P merge 36/144 · D1 mix(g=0.58) 18/36`; `-` when no site is active."""
    parts = []
    for site in sites:
        if not site["active"]:
            continue
        regime = f"{MIX}(g={site['gamma']:.2f})" if site["regime"] == MIX else site["regime"]
        parts.append(f"{site['site']} {regime} {site['leaving']}/{site['entering']}")
    return " · ".join(parts) or "-"


def is_hybrid(plans: dict[str, SitePlan]) -> bool:
    """Some active site redistributes softly (`0 < gamma < 1`)."""
    return any(soft_transfer(plan) for plan in plans.values())
