"""Pass 5: remove dead code, with an EXPLICIT impurity rule (DESIGN 3: never plain DCE).

Impure (always kept, even without users; `deos_dsl.compiler.sites.is_impure`): what torch.fx
calls impure (placeholders, outputs, side-effecting ops), every runtime assertion
(`aten._assert_*`: export's shape and value checks), and every `call_module` (export's
`_guards_fn` input checks; a module may have side effects that the graph cannot see). Everything else without users is removed, e.g. the
unused outputs of a hard site and length reads superseded by a later site.

Shape (torch.fx `PassBase`): `requires` lints; `call` runs `eliminate_dead_code` with the
rule, then recompiles; `ensures` checks no pure node is left without users and no impure
node was removed.
"""

from __future__ import annotations

from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from deos_dsl.compiler.sites import is_impure


class Cleanup(PassBase):
    """Dead-code elimination under `is_impure`; `self.removed` names what went."""

    def __init__(self) -> None:
        self.removed: list[str] = []
        self._impure: set[str] = set()

    def requires(self, graph_module: fx.GraphModule) -> None:
        graph_module.graph.lint()
        self._impure = {node.name for node in graph_module.graph.nodes if is_impure(node)}

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        before = [node.name for node in graph_module.graph.nodes]
        changed = graph_module.graph.eliminate_dead_code(is_impure_node=is_impure)
        after = {node.name for node in graph_module.graph.nodes}
        self.removed = [name for name in before if name not in after]
        graph_module.recompile()
        return PassResult(graph_module, changed)

    def ensures(self, graph_module: fx.GraphModule) -> None:
        graph_module.graph.lint()
        names = {node.name for node in graph_module.graph.nodes}
        if not self._impure <= names:
            raise AssertionError("cleanup removed an impure node")
        if any(not node.users and not is_impure(node) for node in graph_module.graph.nodes):
            raise AssertionError("cleanup left dead code")


def cleanup(graph_module: fx.GraphModule) -> list[str]:
    """Run `Cleanup`; returns the names of the removed nodes."""
    passed = Cleanup()
    passed(graph_module)
    return passed.removed
