"""Pass 6: verify an emitted graph: `lint()`, `recompile()`, fake-tensor propagation, and that
the sequence really shrinks at every active site, by exactly the tokens the site removes:
`N_out = N_in - (entering - leaving)` (`leaving = keep + extra`) on the site's fake output (`meta['val']`).

Shape (torch.fx `PassBase`): `call` checks and never edits (`modified=False`); a failed check
raises `AssertionError` naming the site; `self.lengths[site]` records `(N_in, N_out)`.
"""

from __future__ import annotations

from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from deos_dsl.compiler.graph_edit import refresh
from deos_dsl.compiler.hard_site import SitePlan
from deos_dsl.compiler.trace import TracedModel


class Verify(PassBase):
    """Check `traced`'s graph after discretise; `calls[site]` is the site's hard-site call node."""

    def __init__(self, traced: TracedModel, calls: dict[str, fx.Node], plans: dict[str, SitePlan]) -> None:
        self.traced, self.calls, self.plans = traced, calls, plans
        self.lengths: dict[str, tuple[int, int]] = {}

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        refresh(self.traced)  # lint, recompile, fake-tensor propagation
        for name, call in self.calls.items():
            plan = self.plans[name]
            n_in, n_out = int(call.args[0].meta["val"].shape[1]), int(call.meta["val"][0].shape[1])
            self.lengths[name] = (n_in, n_out)
            if n_out != n_in - (plan.entering - plan.leaving):
                raise AssertionError(f"verify: site {name} gives {n_out} tokens from {n_in}, expected "
                                     f"{n_in - (plan.entering - plan.leaving)}")
        return PassResult(graph_module, False)


def verify(traced: TracedModel, calls: dict[str, fx.Node], plans: dict[str, SitePlan]) -> dict[str, tuple[int, int]]:
    """Run `Verify`; returns `site -> (tokens in, tokens out)`."""
    passed = Verify(traced, calls, plans)
    passed(traced.graph_module)
    return passed.lengths
