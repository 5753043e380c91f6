"""Pass 4: replace every active site by the HARD operator and re-bind the sequence downstream.

Runs on a graph with scores (pass 2) and WITHOUT relaxed sites: the relaxed modules are only
read, through `plan_sites`, for their discrete decisions (`SitePlan`). For each active site in
graph order a `HardSite` (`deos_dsl.compiler.hard_site`) is called on the site's stream and
every later use of the stream reads the reduced one. Then, for every LATER block of the same
stack (the KNOWN TRAP of DESIGN 3):
- every LENGTH READ (the `sym_size(input, 1)` the block reads) is re-pointed at
  `sym_size(reduced stream, 1)`;
- every SIDE TENSOR (RoPE cos/sin, position ids: `gather_tokens`; `[.., N, N]` masks: both
  token axes, `gather_mask`) is gathered with the kept indices, so kept tokens keep their
  original positions (as FastV does);
- with proportional attention, the kept tokens' `log size` bias is added to the attention
  (`key_mask`), and sizes carry on to the next site of the stack.
Sites on one stack chain: a site's reducible span is what the previous site left.

Which graphs: an exported graph must keep a SYMBOLIC length at the site (torch.export with a
dynamic sequence `Dim`: HF decoders, LLaVA's language model). A graph whose length export
specialised to a constant (the embedded model, whose learned positions fix its length; vision
encoders, whose length comes from the image size) has the length baked into every reshape, so
re-binding cannot be done robustly on it: the pass raises `DeosCompileError` and names the
alternative, a `torch.fx.symbolic_trace` graph of modules that read sizes from their input
(the embedded model and its encoders, where reshapes are computed from the reduced tensor and
only side tensors need gathering).

Shape (torch.fx `PassBase`): `requires` checks plans exist for the bound sites and that the
graph has no relaxed site; `call` edits, lints, recompiles and propagates fake tensors;
`ensures` checks every active site's output is shorter than its input.
"""

from __future__ import annotations

import torch
from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from deos_dsl.compiler.blocks import Block, BlockMap
from deos_dsl.compiler.errors import DeosCompileError
from deos_dsl.compiler.graph_edit import call_on_stream, insert_after, refresh
from deos_dsl.compiler.hard_site import HardSite, SitePlan, plan_site
from deos_dsl.compiler.masking import gather_mask
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.trace import SYMBOLIC, first_line
from deos_dsl.frontend import ir
from deos_dsl.ops import gather_tokens

from .bind_sites import BoundSite
from .insert_relaxed import PREFIX as RELAXED_PREFIX
from .insert_relaxed import site_module
from .insert_scores import META_SDPA, SiteScores, bias_attention

PREFIX = "deos_hard_"
META_REBIND = "deos_rebind"
OUTPUTS = ("x", "kept_idx", "sizes", "bias")


def plan_sites(sites: list[BoundSite], scores: dict[str, SiteScores], modules: dict[str, SiteModule]) -> dict[str, SitePlan]:
    """`site name -> SitePlan`, each site's span shrunk by the active sites before it on its stack."""
    plans: dict[str, SitePlan] = {}
    left: dict[str, int] = {}  # stack -> reducible tokens left by the last active site
    for site in sites:
        start, end = scores[site.name].span
        span = (start, start + left.get(site.block.stack, end - start))
        plan = plans[site.name] = plan_site(site.name, modules[site.name], span)
        if plan.active:
            left[site.block.stack] = plan.keep
    return plans


class Discretise(PassBase):
    """Emit the hard sites of `plans` (module docstring); `self.outputs[site]` are their output nodes."""

    def __init__(self, block_map: BlockMap, sites: list[BoundSite], scores: dict[str, SiteScores],
                 plans: dict[str, SitePlan], modules: dict[str, SiteModule]) -> None:
        self.block_map, self.sites, self.scores, self.plans, self.modules = block_map, sites, scores, plans, modules
        self.outputs: dict[str, dict[str, fx.Node]] = {}

    def requires(self, graph_module: fx.GraphModule) -> None:
        if {site.name for site in self.sites} - set(self.plans):
            raise ValueError("discretise: a bound site has no plan")
        if any(name.startswith((RELAXED_PREFIX, PREFIX)) for name, _ in graph_module.named_children()):
            raise ValueError("discretise: the graph already has relaxed or hard sites (run it on the scored graph)")
        traced, active = self.block_map.traced, self._active()
        if active and traced.tracer != SYMBOLIC and not traced.dynamic_dims:
            raise DeosCompileError(
                f"site `{active[0].name}`: the graph was traced ({traced.tracer}) with a STATIC sequence length, baked into "
                "every later reshape; it cannot be re-bound",
                "trace the model with torch.fx.symbolic_trace (modules reading sizes from their input), or "
                "export it with a dynamic sequence length")

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        streams: dict[str, tuple[fx.Node, fx.Node]] = {}
        current: dict[fx.Node, fx.Node] = {}  # side tensor / length read -> what later blocks now read
        sizes: dict[str, fx.Node] = {}
        biases: dict[str, tuple[Block, fx.Node]] = {}  # block path -> the latest proportional bias reaching it
        for index, site in enumerate(self._active()):
            stream, anchor = streams.get(site.block.path, (site.node, site.node))
            outputs = self._insert(graph_module, index, site, stream, anchor, sizes.get(site.block.stack))
            later = self._later(site)
            streams[site.block.path] = (outputs["x"], self._rebind(later, outputs, current))
            # as in the relaxed graph, the latest site of a stack governs: the next site weighs by its
            # sizes, and the blocks after it attend with its `log size` bias (none when it is not
            # proportional: its bias is then 0 on every token)
            sizes[site.block.stack] = outputs["sizes"]
            for block in later:
                if self.plans[site.name].proportional:
                    biases[block.path] = (block, outputs["bias"])
                else:
                    biases.pop(block.path, None)
        for block, bias in biases.values():  # once per block, on its re-bound mask
            bias_attention(block, bias)
        try:
            refresh(self.block_map.traced)
        except DeosCompileError:
            raise
        except Exception as error:  # noqa: BLE001  (any failure of the shrunk graph is reported as one)
            raise DeosCompileError(f"the reduced sequence does not run through the graph: {first_line(error)}",
                                   "a site whose tokens flow into another stack that needs the full length "
                                   "(e.g. learned positions added after the projector) cannot be emitted") from error
        return PassResult(graph_module, True)

    def ensures(self, graph_module: fx.GraphModule) -> None:
        graph_module.graph.lint()
        for name, outputs in self.outputs.items():
            before, after = outputs["call"].args[0].meta["val"].shape[1], outputs["x"].meta["val"].shape[1]
            if not int(after) < int(before) and self.plans[name].keep < self.plans[name].entering:
                raise AssertionError(f"discretise: site {name} did not shrink the sequence ({before} -> {after})")

    # ---- helpers ------------------------------------------------------------------------
    def _active(self) -> list[BoundSite]:
        return [site for site in self.sites if self.plans[site.name].active]

    def _later(self, site: BoundSite) -> list[Block]:
        stack = next((s for s in self.block_map.stacks if s.prefix == site.block.stack), None)
        return [] if stack is None else [b for b in stack.blocks if b.index > site.block.index]

    def _insert(self, gm: fx.GraphModule, index: int, site: BoundSite, stream: fx.Node, anchor: fx.Node,
                sizes: fx.Node | None) -> dict[str, fx.Node]:
        plan, inserted = self.plans[site.name], self.scores[site.name]
        positions = self.modules[site.name].positions
        if positions is not None and positions.shape[0] != plan.entering:
            raise DeosCompileError(f"site `{site.name}`: a spatial operator needs the full grid, "
                                   f"but an earlier site left {plan.entering} tokens", "put spatial sites first")
        gm.add_submodule(f"{PREFIX}{index}", HardSite(plan, positions))
        score = inserted.score
        if score is None:
            raise DeosCompileError(f"site `{site.name}`: a learned scorer cannot be emitted yet",
                                   "use a fixed score for emitted sites")
        score.update_kwarg("span", plan.span)
        # the previous site's re-bound length reads stay on ITS output (they are then dead: cleanup)
        outputs = call_on_stream(anchor, f"{PREFIX}{index}", (stream, score, inserted.features, sizes), OUTPUTS,
                                 score, site.node, keep=lambda user: META_REBIND in user.meta)
        self.outputs[site.name] = outputs
        return outputs

    def _rebind(self, blocks: list[Block], outputs: dict[str, fx.Node], current: dict[fx.Node, fx.Node]) -> fx.Node:
        """Point the length reads and side tensors of `blocks` at the reduced sequence; `current`
        maps each original read / side tensor to what later blocks read now (updated). Returns
        the last inserted node."""
        made: dict[fx.Node, fx.Node] = {}
        anchor = outputs["bias"]
        for block in blocks:
            for read in block.length_reads:
                if read not in made:
                    anchor = made[read] = insert_after(anchor, torch.ops.aten.sym_size.int, (outputs["x"], 1))
                    anchor.meta[META_REBIND] = True
                self._replace_in(block, current.get(read, read), made[read])
            for side in block.side:
                now = current.get(side.node, side.node)
                if side.node not in made:
                    gather = gather_mask if side.kind == "mask" else gather_tokens
                    anchor = made[side.node] = insert_after(anchor, gather, (now, outputs["kept_idx"]))
                self._replace_in(block, now, made[side.node])
        current.update(made)
        return anchor

    @staticmethod
    def _replace_in(block: Block, old: fx.Node, new: fx.Node) -> None:
        members = set(block.nodes)
        for user in list(old.users):  # the block's nodes and the attention scores recomputed from them
            if user in members or user.meta.get(META_SDPA) in members:
                user.replace_input_with(old, new)

def discretise(space: ir.Space, block_map: BlockMap, sites: list[BoundSite], scores: dict[str, SiteScores],
               modules: dict[str, SiteModule] | None = None) -> tuple[dict[str, SitePlan], dict[str, fx.Node]]:
    """Plan every site from its module (`modules`, e.g. after a search; default: fresh modules
    initialised from the space), run `Discretise`; returns the plans and each active site's
    hard-site call node."""
    if modules is None:
        modules = {site.name: site_module(space, site, scores[site.name]) for site in sites}
    plans = plan_sites(sites, scores, modules)
    passed = Discretise(block_map, sites, scores, plans, modules)
    passed(block_map.graph_module)
    return plans, {name: outputs["call"] for name, outputs in passed.outputs.items()}
