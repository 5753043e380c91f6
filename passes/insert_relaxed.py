"""Pass 3: insert a trainable relaxed site module after every bound site's stream node.

For each site, in graph order: its `SiteModule` (`deos_dsl.compiler.site_module`, made by
`deos_dsl.compiler.sites.site_module`) is added as submodule `deos_site_<i>` and called on the site's stream, its score and features (pass 2)
and the soft keep mask / sizes carried in from the previous site upstream; every other use of
the stream reads the site's output `y` instead (`replace_all_uses_with` with a
`delete_user_cb`, no self-loop). Carrying: within a block stack, site to site; across the
projector, the mask / sizes / bias of the last site upstream, cut to that site's reducible span
(`span_tokens`) and placed on the receiving one: a projector site's into the decoder's span (in
the stream entering its first block), and, when the vision chain feeds the decoder
(`BlockMap.vision_feeds_decoder`: a 1:1 projector), the last vision site's into a projector
site (the projector's whole output) or, without one, into the decoder's span. The spans must
have the same length (`DeosCompileError`). So a relaxed forward sees a vision site's reduction
in the decoder as the emitted graph, which really removes the tokens, does (with the kept
tokens at their original positions); at temperature 0 a site receiving a carried mask never
keeps a token it marks removed (`ops.removed_last`).

Masking: every attention node of a block whose attention the site precedes (a later block of
its stack; its own block too when it sits `before` it, `BoundSite.precedes_attention`) gets
`attn_mask = key_mask(bias, q, its own mask, is_causal)` and `is_causal=False`
(`deos_dsl.compiler.masking`): the site's additive key bias on top of the node's causal or
existing mask; attention scores recomputed from that node (pass 2) see the same mask, and a
`before` site's light attention pass sees the bias of the sites before it (`bias_light`).
Sites on one stream node (`before` block k and `after` block k - 1) chain in site order; a
site's call goes after its score (`anchor_for`), and what reads its stream as it was before
it stays there (`before_readers`).

Shape (torch.fx `PassBase`): `requires` checks the scores belong to the sites, no site
module exists and no site fuses into an extra token (`into: extra(1)` adds a token: it has no
shape-preserving relaxed form, `DeosCompileError`); `call` edits the graph, then lints,
recompiles and propagates fake tensors; `ensures` checks each site module is called once on
a `[B, N, D]` stream with the same shape out, and that the model's own parameters stay frozen
(only site modules train).
"""

from __future__ import annotations

from typing import Callable

from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from deos_dsl.compiler.blocks import Block, BlockMap
from deos_dsl.compiler.graph_edit import call_on_stream, insert_after, refresh
from deos_dsl.compiler.masking import place_tokens, span_tokens
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.compiler.site_transfer import extra_tokens, fuse_refusal
from deos_dsl.compiler.sites import RELAXED_PREFIX, BoundSite, SiteScores, anchor_for, before_readers, bias_attention, bias_light, light_of
from deos_dsl.errors import DeosCompileError
from deos_dsl.frontend import ir

OUTPUTS = ("x", "mask", "sizes", "bias")


class InsertRelaxed(PassBase):
    """Insert the site modules `modules[site.name]`; `self.calls[site.name]` are their call nodes."""

    def __init__(self, space: ir.Space, block_map: BlockMap, sites: list[BoundSite], scores: dict[str, SiteScores],
                 modules: dict[str, SiteModule]) -> None:
        self.space, self.block_map, self.sites, self.scores, self.modules = space, block_map, sites, scores, modules
        self.calls: dict[str, fx.Node] = {}
        self._outputs: dict[str, dict[str, fx.Node]] = {}

    def requires(self, graph_module: fx.GraphModule) -> None:
        if not {site.name for site in self.sites} == set(self.scores) == set(self.modules):
            raise ValueError("insert_relaxed: the scores or the site modules were made for other sites")
        if any(name.startswith(RELAXED_PREFIX) for name, _ in graph_module.named_children()):
            raise ValueError("insert_relaxed: the graph already has site modules")
        for site in self.sites:  # before any edit: `into: extra(1)` adds a token
            if extra_tokens(self.space.sites[site.site_index].operator) == 1:
                raise fuse_refusal(site.name)

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        done: list[BoundSite] = []
        streams: dict[fx.Node, tuple[fx.Node, fx.Node]] = {}  # site node -> (output stream, last node defining it)
        for index, site in enumerate(self.sites):
            stream, anchor = streams.get(site.node, (site.node, site.node))
            carried = self._carried(done, site.block, lambda earlier: earlier.block.stack == site.block.stack)
            streams[site.node] = self._insert(graph_module, index, site, stream, anchor, carried)
            done.append(site)
        for stack in self.block_map.stacks:
            for block in stack.blocks:
                carried = self._carried(done, block, lambda earlier: earlier.precedes_attention(block))
                if carried is not None:
                    bias_attention(block, carried[2])
        refresh(self.block_map.traced)
        return PassResult(graph_module, True)

    def ensures(self, graph_module: fx.GraphModule) -> None:
        graph_module.graph.lint()
        for name, call in self.calls.items():
            y = next(user for user in call.users if user.args[1] == 0)
            if call.args[0].meta["val"].shape != y.meta["val"].shape:
                raise AssertionError(f"insert_relaxed: site {name} changed the stream's shape")
        if any(p.requires_grad for n, p in graph_module.named_parameters() if not n.startswith(RELAXED_PREFIX)):
            raise AssertionError("insert_relaxed: a model parameter is trainable; the model must stay frozen")

    # ---- insertion ----------------------------------------------------------------------
    def _insert(self, gm: fx.GraphModule, index: int, site: BoundSite, stream: fx.Node, anchor: fx.Node,
                carried: tuple[fx.Node, fx.Node, fx.Node] | None) -> tuple[fx.Node, fx.Node]:
        """Insert site `index` on `stream` after `anchor`; returns (its output stream, its last node)."""
        inserted, module = self.scores[site.name], self.modules[site.name]
        gm.add_submodule(f"{RELAXED_PREFIX}{index}", module)
        mask, sizes = (carried[0], carried[1]) if carried else (None, None)
        if carried is not None and inserted.score is not None and light_of(inserted.score) == site.name:
            bias_light(inserted.score, carried[2])  # a `before` site's light pass sees the earlier sites' removal
        before = before_readers(site, inserted)
        anchor = anchor_for(site, anchor, inserted, stream)
        args = (stream, inserted.score, mask, sizes, inserted.features)
        outputs = call_on_stream(anchor, f"{RELAXED_PREFIX}{index}", args, OUTPUTS, inserted.score, site.node,
                                 keep=before.__contains__)
        call, last = outputs.pop("call"), outputs[OUTPUTS[-1]]
        self.calls[site.name], self._outputs[site.name] = call, outputs
        return outputs["x"], last

    def _carried(self, done: list[BoundSite], block: Block,
                 reaches: Callable[[BoundSite], bool]) -> tuple[fx.Node, fx.Node, fx.Node] | None:
        """(mask, sizes, bias) of the latest done site that `reaches` `block` (its stream, or its
        attention: `BoundSite.precedes_attention`), else of the site feeding its stream across
        the projector (`_feeder`), placed on it."""
        same = [s for s in done if reaches(s)]
        if same:
            outputs = self._outputs[same[-1].name]
            return outputs["mask"], outputs["sizes"], outputs["bias"]
        feeder = self._feeder(done, block)
        return None if feeder is None else self._placed(feeder, block)

    def _feeder(self, done: list[BoundSite], block: Block) -> BoundSite | None:
        """The done site whose reduction enters `block` from upstream: for a decoder block the last
        projector site, else the last vision site when the vision chain feeds the decoder
        (`BlockMap.vision_feeds_decoder`: a 1:1 projector); for the projector that vision site."""
        projector, decoder, vision = self.block_map.projector, self.block_map.stack("decoder"), self.block_map.stack("vision")
        on_decoder = decoder is not None and block.stack == decoder.prefix
        from_projector = [s for s in done if projector is not None and s.block is projector]
        if on_decoder and from_projector:
            return from_projector[-1]
        if not (on_decoder or block is projector) or vision is None or not self.block_map.vision_feeds_decoder:
            return None
        from_vision = [s for s in done if s.block.stack == vision.prefix]
        return from_vision[-1] if from_vision else None

    def _placed(self, site: BoundSite, block: Block) -> tuple[fx.Node, fx.Node, fx.Node]:
        """`site`'s (mask, sizes, bias) on its reducible span, carried onto the reducible span of
        `block`'s role (built once per site and role): the decoder's, placed in the stream entering
        its first block; the projector's, its whole output. The spans must have the same length."""
        role = "projector" if block is self.block_map.projector else "decoder"
        key = f"{site.name}->{role}"
        if key not in self._outputs:
            span, width = self.block_map.spans.get(role), self.scores[site.name].span
            if span is None or span[1] - span[0] != width[1] - width[0]:
                raise DeosCompileError(f"site `{site.name}`: its reducible span {width} does not map onto the {role}'s "
                                       f"{span}", "give both roles spans of the same length")
            outputs = self._outputs[site.name]
            decoder = self.block_map.stack("decoder")
            entry = decoder.blocks[0].entry if role == "decoder" and decoder is not None else None
            if entry is None and span != (0, int(block.shape[1])):
                raise DeosCompileError(f"site `{site.name}`: the projector's reducible span {span} is not its whole "
                                       f"output, so a vision site's reduction cannot be carried across it",
                                       "leave the projector's span at its default (its whole output)")
            placed, last = {}, entry if entry is not None else outputs[OUTPUTS[-1]]
            for name, fill in (("mask", 1.0), ("sizes", 1.0), ("bias", 0.0)):
                last = placed[name] = insert_after(last, span_tokens, (outputs[name], *width))
                if entry is not None:
                    last = placed[name] = insert_after(last, place_tokens, (placed[name], entry, span[0], fill))
            self._outputs[key] = placed
        placed = self._outputs[key]
        return placed["mask"], placed["sizes"], placed["bias"]


def insert_relaxed(space: ir.Space, block_map: BlockMap, sites: list[BoundSite], scores: dict[str, SiteScores],
                   modules: dict[str, SiteModule]) -> dict[str, fx.Node]:
    """Run `InsertRelaxed` on the block map's graph; returns `site name -> its module's call node`."""
    inserted = InsertRelaxed(space, block_map, sites, scores, modules)
    inserted(block_map.graph_module)
    return inserted.calls
