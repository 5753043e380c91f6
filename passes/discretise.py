"""Pass 4: replace every active site by the HARD operator and re-bind the sequence downstream.

Runs on a graph with scores (pass 2) and WITHOUT relaxed sites: the relaxed modules are only
read, through `plan_sites`, for their discrete decisions (`SitePlan`). For each active site in
graph order a `HardSite` (`deos_dsl.compiler.hard_site`) is called on the site's stream and
every later use of the stream reads the reduced one. Then everything downstream is re-bound
to the shorter sequence (the KNOWN TRAP of DESIGN 3), wherever the tokens go: the site's TOKEN
FLOW (`deos_dsl.compiler.token_flow`, found on the original graph before any edit) follows them
out of the site's stack through glue (slices such as dropping CLS, the projector, embedding adds,
`cat` with the text) into later stacks, and `deos_dsl.compiler.rebind` edits:
- every LENGTH READ (the `sym_size(input, 1)` a reached block reads) is re-pointed at
  `sym_size(its reduced entry stream, 1)`;
- every SIDE TENSOR, of a reached block (RoPE cos/sin, position ids: `gather_tokens`;
  `[.., N, N]` masks: both token axes, `gather_mask`) or met in glue (a tensor broadcast onto the
  tokens with the old length on their axis, e.g. learned positions `pos[:144]` added to the
  projected visual tokens: `gather_side`), is gathered with the kept indices carried to that
  point (shifted by the slices and concatenations between stacks), so each surviving token keeps
  its original position (as FastV does; a merged token keeps its destination's); a tensor
  computed from the reduced tokens' own length (a mask built from `x.shape[1]`) is left as it is;
- slice / select bounds after the span are counted from the end;
- a consumer that cannot be re-bound (the token axis re-laid out into a grid, a slice into the
  span, ...) is a `DeosCompileError` naming the node, raised before any edit (`plan_sites`);
- with proportional attention, the kept tokens' `log size` bias is added to the attention
  (`key_mask`) of the later blocks of the site's stack, and sizes carry on to the next site of
  the stack; as in the relaxed graph, a projector site's sizes and bias also cross into the
  stack it feeds (placed on its stream, 1 and 0 on the other tokens), a vision site's do not.
Sites chain: a site's reducible span is its span shrunk by every earlier active site whose
tokens reach its stream (`shrink`: within a stack, what the previous site left, its kept tokens
and its extra ones, `SitePlan.leaving`; across stacks, a vision site shortens the projector's and
the decoder's visual span by the tokens it removed). Sites on one BLOCK: a score or key features
computed from the block's attention have the block's length, so they are gathered with the
kept indices of the block's earlier `mid` / `after` sites (a text-query score keeps the block's
span); a `before` site's light pass reads the stream entering the block, already reduced by the
sites before it. Sites chain by stream node, and what reads a `before` site's stream as it was
before it (its light pass, a first block's length reads) stays on it (`before_readers`).

Which graphs: an exported graph must keep a SYMBOLIC length at the site (torch.export with a
dynamic sequence `Dim`: HF decoders, LLaVA's language model). A graph whose length export
specialised to a constant (the embedded model, whose learned positions fix its length; vision
encoders, whose length comes from the image size) has the length baked into every reshape, so
re-binding cannot be done robustly on it: the pass raises `DeosCompileError` and names the
alternative, a `torch.fx.symbolic_trace` graph of modules that read sizes from their input
(the embedded model and its encoders, where reshapes are computed from the reduced tensor and
only side tensors need gathering). `deos emit` tries that first, then re-exports the stack alone
with a dynamic length (`deos_dsl.compiler.stack_retrace`: HF vision encoders, and LLaVA's
projector, whose features are scattered over the decoder's image placeholders).

Shape (torch.fx `PassBase`): `requires` checks plans exist for the bound sites and that the
graph has no relaxed site; `call` edits, lints, recompiles and propagates fake tensors;
`ensures` checks every active site's output is shorter than its input.
"""

from __future__ import annotations

from typing import Hashable

from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from deos_dsl.compiler.blocks import Block, BlockMap
from deos_dsl.compiler.graph_edit import call_on_stream, insert_after, refresh
from deos_dsl.compiler.hard_site import HardSite, SitePlan, plan_site
from deos_dsl.compiler.rebind import META_REBIND, Rebind
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.positions import light_passes
from deos_dsl.compiler.sites import HARD_PREFIX, RELAXED_PREFIX, BoundSite, SiteScores, anchor_for, before_readers, bias_attention
from deos_dsl.compiler.token_flow import TokenFlow, token_flow
from deos_dsl.compiler.trace import SYMBOLIC
from deos_dsl.errors import DeosCompileError, first_line
from deos_dsl.ops import gather_tokens

OUTPUTS = ("x", "kept_idx", "sizes", "bias")
Span = tuple[int, int]


def shrink(site: BoundSite, span: Span, removals: list[tuple[Span, int]]) -> Span:
    """`span` (original coordinates of `site`'s stream) once earlier sites removed `n` tokens of
    each `(landed, n)`, `landed` in the same coordinates: removals inside the span shorten it,
    removals before it shift it; one straddling its edge is a `DeosCompileError`."""
    before = inside = 0
    for landed, removed in removals:
        if landed[1] <= span[0]:
            before += removed
        elif span[0] <= landed[0] and landed[1] <= span[1]:
            inside += removed
        elif landed[0] < span[1]:
            raise DeosCompileError(f"site `{site.name}`: an earlier site reduces tokens {landed[0]}..{landed[1]} of its "
                                   f"stream, across the edge of its reducible span {span[0]}..{span[1]}",
                                   "give both sites spans that nest (e.g. both `reducible: visual`)")
    return (span[0] - before, span[1] - before - inside)


def plan_sites(block_map: BlockMap, sites: list[BoundSite], scores: dict[str, SiteScores],
               modules: dict[str, SiteModule]) -> tuple[dict[str, SitePlan], dict[str, TokenFlow]]:
    """`site name -> SitePlan` (each site's span shrunk by the earlier active sites whose tokens
    reach its stream, `shrink`) and the token flow of every active site."""
    plans: dict[str, SitePlan] = {}
    flows: dict[str, TokenFlow] = {}
    landed: list[tuple[str, Span, int]] = []  # (stack, where an active site's span lies in it, tokens removed)
    for site in sites:
        span = scores[site.name].span
        removals = [(at, removed) for stack, at, removed in landed if stack == site.block.stack]
        plan = plans[site.name] = plan_site(site.name, modules[site.name], shrink(site, span, removals))
        if plan.active:
            flow = flows[site.name] = token_flow(block_map, site.node, span, before_readers(site, scores[site.name]))
            landed += [(stack, at, plan.entering - plan.leaving) for stack, at in flow.landed(block_map).items()]
    return plans, flows


class Discretise(PassBase):
    """Emit the hard sites of `plans` (module docstring); `self.outputs[site]` are their output nodes."""

    def __init__(self, block_map: BlockMap, sites: list[BoundSite], scores: dict[str, SiteScores],
                 plans: dict[str, SitePlan], modules: dict[str, SiteModule], flows: dict[str, TokenFlow]) -> None:
        self.block_map, self.sites, self.scores, self.plans, self.modules = block_map, sites, scores, plans, modules
        self.flows = flows
        self.outputs: dict[str, dict[str, fx.Node]] = {}
        self._on_block: dict[str, list[tuple[SitePlan, fx.Node]]] = {}  # block path -> earlier (plan, kept_idx)

    def requires(self, graph_module: fx.GraphModule) -> None:
        if {site.name for site in self.sites} - set(self.plans) or {site.name for site in self._active()} - set(self.flows):
            raise ValueError("discretise: a bound site has no plan, or an active one no token flow")
        if any(name.startswith((RELAXED_PREFIX, HARD_PREFIX)) for name, _ in graph_module.named_children()):
            raise ValueError("discretise: the graph already has relaxed or hard sites (run it on the scored graph)")
        traced, active = self.block_map.traced, self._active()
        if active and traced.tracer != SYMBOLIC and not traced.dynamic_dims:
            raise DeosCompileError(
                f"site `{active[0].name}`: the graph was traced ({traced.tracer}) with a STATIC sequence length, baked into "
                "every later reshape; it cannot be re-bound",
                "trace the model with torch.fx.symbolic_trace (modules reading sizes from their input), or "
                "export it with a dynamic sequence length")

    def _drop_closed_scores(self, graph_module: fx.GraphModule) -> None:
        """Erase the (unused) score and feature nodes of the inactive sites: they were inserted for
        the site's full span, which an earlier active site may have shrunk (a searched schedule
        that closes a site after an open one)."""
        for site in self.sites:
            if not self.plans[site.name].active:
                light = light_passes(graph_module.graph).get(site.name, [])
                for node in (self.scores[site.name].score, self.scores[site.name].features, *reversed(light)):
                    if node is not None and not node.users:
                        graph_module.graph.erase_node(node)

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        streams: dict[str, tuple[fx.Node, fx.Node]] = {}
        current: dict[Hashable, fx.Node] = {}  # side tensor / length read -> what its users now read
        sizes: dict[str, fx.Node] = {}
        biases: dict[str, tuple[Block, fx.Node]] = {}  # block path -> the latest proportional bias reaching it
        self._drop_closed_scores(graph_module)
        for index, site in enumerate(self._active()):
            stream, anchor = streams.get(site.node, (site.node, site.node))
            outputs = self._insert(graph_module, index, site, stream, anchor, sizes.get(site.block.stack))
            streams[site.node] = (outputs["x"], outputs["bias"])
            flow = self.flows[site.name]
            rebind = Rebind(flow, outputs, current, site.name)
            rebind.apply()
            # as in the relaxed graph, the latest site of a stack governs: the next site weighs by its
            # sizes, and the blocks after it attend with its `log size` bias (none when it is not
            # proportional: its bias is then 0 on every token); a projector site's cross into the
            # stack it feeds (placed on that stream), a vision site's stay in the vision stack
            crossing = site.block is self.block_map.projector
            later = [block for block in flow.blocks if crossing or block.stack == site.block.stack]
            sizes[site.block.stack] = outputs["sizes"]
            for block in later:
                sizes[block.stack] = rebind.along(block.entry, "sizes", 1.0)  # one node per stack
                if self.plans[site.name].proportional:
                    biases[block.path] = (block, rebind.along(block.entry, "bias", 0.0))
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
                                   "report the model: a consumer of the reduced tokens was not re-bound "
                                   "(see deos_dsl/compiler/token_flow.py for what is followed)") from error
        return PassResult(graph_module, True)

    def ensures(self, graph_module: fx.GraphModule) -> None:
        graph_module.graph.lint()
        for name, outputs in self.outputs.items():
            before, after = outputs["call"].args[0].meta["val"].shape[1], outputs["x"].meta["val"].shape[1]
            if not int(after) < int(before) and self.plans[name].leaving < self.plans[name].entering:
                raise AssertionError(f"discretise: site {name} did not shrink the sequence ({before} -> {after})")

    # ---- helpers ------------------------------------------------------------------------
    def _active(self) -> list[BoundSite]:
        return [site for site in self.sites if self.plans[site.name].active]

    def _insert(self, gm: fx.GraphModule, index: int, site: BoundSite, stream: fx.Node, anchor: fx.Node,
                sizes: fx.Node | None) -> dict[str, fx.Node]:
        plan, inserted = self.plans[site.name], self.scores[site.name]
        positions = self.modules[site.name].positions
        if positions is not None and positions.shape[0] != plan.entering:
            raise DeosCompileError(f"site `{site.name}`: a spatial operator needs the full grid, "
                                   f"but an earlier site left {plan.entering} tokens", "put spatial sites first")
        gm.add_submodule(f"{HARD_PREFIX}{index}", HardSite(plan, positions))
        score, features = inserted.score, inserted.features
        if score is None:
            raise DeosCompileError(f"site `{site.name}`: a learned scorer cannot be emitted yet",
                                   "use a fixed score for emitted sites")
        # an earlier site of the same block: what the block's attention gave (a score, key features)
        # has the block's length, so it follows that site's kept tokens (a `before` site's own light
        # pass reads the stream it reduces, and its reduction precedes the block's attention)
        earlier = [] if site.position == "before" else self._on_block.setdefault(site.block.path, [])
        on_stream = score.args[0] in (site.node, stream)
        score.update_kwarg("span", plan.span if on_stream or not earlier else earlier[0][0].span)
        for _, kept_idx in earlier:
            if not on_stream:
                score = anchor = insert_after(anchor, gather_tokens, (score, kept_idx))
            if features is not None:
                features = anchor = insert_after(anchor, gather_tokens, (features, kept_idx))
        if earlier and on_stream and features is not None:
            score.update_kwarg("features", features)
        # the previous site's re-bound length reads stay on ITS output (they are then dead: cleanup);
        # what reads this site's stream as it was before it stays on it (`before_readers`)
        before = self.flows[site.name].before
        anchor = anchor_for(site, anchor, SiteScores(score, features, plan.span), stream)
        outputs = call_on_stream(anchor, f"{HARD_PREFIX}{index}", (stream, score, features, sizes), OUTPUTS,
                                 score, site.node, keep=lambda user: META_REBIND in user.meta or user in before)
        self.outputs[site.name] = outputs
        earlier.append((plan, outputs["kept_idx"]))
        return outputs


def discretise(block_map: BlockMap, sites: list[BoundSite], scores: dict[str, SiteScores],
               modules: dict[str, SiteModule]) -> tuple[dict[str, SitePlan], dict[str, fx.Node]]:
    """Plan every site from its module (`modules`: initialised from the space, or a search's
    result), run `Discretise`; returns the plans and each active site's hard-site call node."""
    plans, flows = plan_sites(block_map, sites, scores, modules)
    passed = Discretise(block_map, sites, scores, plans, modules, flows)
    passed(block_map.graph_module)
    return plans, {name: outputs["call"] for name, outputs in passed.outputs.items()}
