"""The data the passes hand each other, on the graph and in one place (no pass imports another).

- `BoundSite` (pass 1, bind_sites): one site of the space bound to a block's output node; the
  node carries `meta[META_SITE]` (a list: two sites may select one block);
- `SiteScores` (pass 2, insert_scores): a site's inserted `score [B, N]`, `features [B, N, d]`
  and reducible span; the nodes carry `meta[META_SCORE]` = site name, an attention score also
  `meta[META_SDPA]` = the attention node it recomputes;
- `site_module`: the trainable relaxed `SiteModule` of a site (what pass 3 inserts as
  `RELAXED_PREFIX<i>` and pass 4 plans its hard site `HARD_PREFIX<i>` from);
- `bias_attention`: the key bias a site adds to the attention of the blocks it reaches, used by
  passes 3 and 4 alike;
- `is_impure` / `live_nodes`: the dead-code rule of pass 5 (cleanup), which the cost pass
  follows so that it never counts what cleanup removes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from deos_dsl.frontend import ir

from .blocks import Block
from .graph_edit import add_key_bias, add_logit_bias, eager_attention_nodes, sdpa_nodes
from .site_module import SiteModule

META_SITE, META_SCORE, META_SDPA = "deos_site", "deos_score", "deos_score_sdpa"
RELAXED_PREFIX, HARD_PREFIX = "deos_site_", "deos_hard_"


@dataclass(frozen=True)
class BoundSite:
    """One searched site: block `block` of the `site_index`-th `site` of the space, at `node`.

    Two `site`s may select the same block (depth percents on a shallow model): both bind, and
    they reduce one after the other in site order (`meta['deos_site']` is a list).
    """

    site_index: int
    selector: str
    block: Block
    node: fx.Node

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
