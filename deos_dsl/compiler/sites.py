"""The data the passes hand each other, on the graph and in one place (no pass imports another).

- `BoundSite` (pass 1, bind_sites): one site of the space bound to the stream node of its
  position in a block (`at:`); the node carries `meta[META_SITE]` (a list: two sites may bind
  one node);
- `SiteScores` (pass 2, insert_scores): a site's inserted `score [B, N]`, `features [B, N, d]`
  and reducible span; the nodes carry `meta[META_SCORE]` = site name, an attention score also
  `meta[META_SDPA]` = the attention node it recomputes;
- `site_module`: the trainable relaxed `SiteModule` of a site (what pass 3 inserts as
  `RELAXED_PREFIX<i>` and pass 4 plans its hard site `HARD_PREFIX<i>` from);
- `bias_attention`: the key bias a site adds to the attention of the blocks it reaches
  (`BoundSite.precedes_attention`), used by passes 3 and 4 alike; `bias_light`: the same for a
  `before` site's light attention pass (`positions.light_attention`, whose copies `light_of`
  names; `scored_site` names the site any score node belongs to);
- `anchor_for` / `before_readers`: where passes 3 and 4 place a site's call (after its score),
  and what keeps reading its stream as it was before it;
- `is_impure` / `live_nodes`: the dead-code rule of pass 5 (cleanup), which the cost pass
  follows so that it never counts what cleanup removes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import Tensor, fx

from deos_dsl.errors import DeosCompileError
from deos_dsl.frontend import ir

from .blocks import Block
from .graph_edit import add_key_bias, add_logit_bias, eager_attention_nodes, insert_before, sdpa_nodes
from .masking import key_mask
from .positions import META_LIGHT, light_passes
from .site_module import SiteModule
from .site_scores import query_attention

META_SITE, META_SCORE, META_SDPA = "deos_site", "deos_score", "deos_score_sdpa"
RELAXED_PREFIX, HARD_PREFIX = "deos_site_", "deos_hard_"

_SHORT = ((r"projector$", "P"), (r"vision.*\blayers\.(\d+)$", r"V\1"), (r"\blayers\.(\d+)$", r"D\1"))


def short_site(name: str) -> str:
    """`decoder.layers.2@0` / `model.language_model.layers.2@1` -> `D2`, `vision.layers.1@0` /
    `model.vision_tower.vision_model.encoder.layers.1@0` -> `V1`, `(model.multi_modal_)projector@0` -> `P`;
    any other site keeps its module path."""
    base = name.split("@")[0]
    return next((re.sub(r".*?" + pattern, replacement, base) for pattern, replacement in _SHORT
                 if re.search(pattern, base)), base)


@dataclass(frozen=True)
class BoundSite:
    """One searched site: block `block` of the `site_index`-th `site` of the space, at `node`,
    the block's stream at `position` (`deos_dsl.compiler.positions`).

    Two sites may bind one node (depth percents on a shallow model; `before` a block and `after`
    the previous one): both bind, and they reduce one after the other in site order
    (`meta['deos_site']` is a list).
    """

    site_index: int
    selector: str
    block: Block
    node: fx.Node
    position: str = "after"

    def precedes_attention(self, block: Block) -> bool:
        """Whether this site reduces the stream before `block`'s attention runs: a site of an
        earlier block of the same stack, or one `before` this block."""
        return block.stack == self.block.stack and (
            self.block.index < block.index or (self.block.index == block.index and self.position == "before"))

    @property
    def layer(self) -> int:
        """The last layer of its stack that sees every token: the block's index, one less `before` it."""
        return self.block.index - (self.position == "before")

    @property
    def name(self) -> str:
        """The site's stable name: `<block path>@<site index>`."""
        return f"{self.block.path}@{self.site_index}"


@dataclass
class SiteScores:
    """The inserted nodes of one site: `score [B, N]` (None for a learned scorer) and
    optional `features [B, N, d]`, plus the reducible `span` of the site's stream."""

    score: fx.Node | None
    features: fx.Node | None
    span: tuple[int, int]


def site_module(space: ir.Space, site: BoundSite, scores: SiteScores, settings: ir.SiteSettings | None = None) -> SiteModule:
    """A fresh `SiteModule` for `site`, initialised from the space's IR, or from `settings`
    in its place (e.g. the fixed settings of a discretised search result)."""
    return SiteModule(site.name, settings or space.sites[site.site_index], scores.span, int(site.node.meta["val"].shape[-1]))


def bias_attention(block: Block, bias: fx.Node) -> None:
    """Add the key `bias [B, N]` to every attention node of `block`, and point the attention
    scores recomputed from those nodes at the same new mask, so a score always reads the
    logits its attention uses."""
    fused = sdpa_nodes(block.nodes)
    for sdpa in fused:
        mask = add_key_bias(sdpa, bias)
        for user in [node for node in sdpa.graph.nodes if node.meta.get(META_SDPA) is sdpa]:
            user.update_arg(2, mask)
            user.update_arg(3, False)
    for softmax in [] if fused else eager_attention_nodes(block.nodes):  # scores read its output: biased too
        add_logit_bias(softmax, bias)


def light_of(node: fx.Node) -> str | None:
    """The site whose light attention pass `node` is a copy of (`positions.light_attention`)."""
    light = node.meta.get(META_LIGHT)
    return light[0] if light else None


def scored_site(node: fx.Node) -> str | None:
    """The site whose score `node` computes: a score or feature node, or a light-pass copy."""
    return node.meta.get(META_SCORE) or light_of(node)


def before_readers(site: BoundSite, scores: SiteScores) -> set[fx.Node]:
    """What reads a `before` site's stream as it was BEFORE the site: its light attention pass
    and the readers of the stream that precede the pass's end (the lengths a stack's first
    block builds its mask and positions from: the block's side tensors are then gathered like
    any other's). Empty for a site without a light pass. A TENSOR read of the stream there would
    have to see the reduced tokens: `DeosCompileError`."""
    light = set(light_passes(site.node.graph).get(site.name, []))
    if not light:
        return set()
    last = max(light | {node for node in (scores.score, scores.features) if node is not None})
    early = {user for user in site.node.users if user < last and user not in light and scored_site(user) is None}
    tensors = sorted(user for user in early if isinstance(user.meta.get("val"), Tensor))
    if tensors:
        raise DeosCompileError(f"site `{site.name}`: `{tensors[0].name}` reads the tokens entering block "
                               f"`{site.block.path}` before its light attention pass ends, so it cannot read the reduced "
                               "tokens", "put the site `at: after` the previous block, or score it without attention")
    return light | early


def anchor_for(site: BoundSite, anchor: fx.Node, scores: SiteScores, stream: fx.Node) -> fx.Node:
    """Where `site`'s call goes: after `anchor` (what defines its `stream` now) and after the
    score and features it reads (a `before` site's light pass lies between its stream and the
    block, `before_readers`; a score computed on the stream itself moves with it,
    `call_on_stream`)."""
    nodes = [anchor, scores.features]
    if scores.score is not None and scores.score.args[0] not in (site.node, stream):
        nodes.append(scores.score)
    return max(node for node in nodes if node is not None)


def bias_light(score: fx.Node, bias: fx.Node) -> None:
    """Add the key `bias [B, N]` to the attention a `before` site's light pass recomputes (the
    earlier sites' soft removal, as the block's own attention gets it in `bias_attention`)."""
    if score.target is query_attention:
        mask = insert_before(score, key_mask, (bias, score.args[0], score.args[2], score.args[3]))
        score.update_arg(2, mask)
        score.update_arg(3, False)
    else:  # weights_attention of a copied eager softmax
        add_logit_bias(score.args[0], bias)


def is_impure(node: fx.Node) -> bool:
    """Cleanup's rule: what torch.fx calls impure (placeholders, outputs, side-effecting ops),
    every runtime assertion (`aten._assert_*`) and every `call_module` stay, even without users."""
    return node.is_impure() or node.op == "call_module" or str(node.target).startswith("aten._assert")


def live_nodes(graph_module: fx.GraphModule) -> set[fx.Node]:
    """The nodes that cleanup keeps: those an output, an impure node (`is_impure`) or a site
    score depends on; the others are dead code."""
    live: set[fx.Node] = set()
    todo = [node for node in graph_module.graph.nodes if is_impure(node) or META_SCORE in node.meta]
    while todo:
        node = todo.pop()
        if node not in live:
            live.add(node)
            todo += node.all_input_nodes
    return live
