"""Pass 2: insert the importance score (and affinity features) of every bound site.

Per site, by what its `score` is in the table `deos_dsl.frontend.vocab.SCORES` (kernels in
`deos_dsl.compiler.site_scores`):
- an `attention` score (`attention(query: last | cls | text)`): ONE recomputed query row from
  the q and k feeding the block's (last) `scaled_dot_product_attention`, post-RoPE
  `[B, H, N, dh]`, with that node's mask, causality and scale; in a block that computes
  attention eagerly (matmul + softmax, e.g. Gemma2's soft-capping) the query rows of the
  probabilities its softmax returns (`text`: the mean of the text rows, not the row of the mean
  text query); the node is inserted right after the attention node;
- a `learned` score: nothing here (the site module owns the scorer);
- any other (`norm`, `similarity(to: text | tokens)`, `position`): its stream kernel on the
  block's output stream (a `grid` score needs a span of square size: a `DeosCompileError`
  otherwise).
`affinity: keys` also inserts the head-mean keys of the block's attention as features (a block
without attention, e.g. the projector, uses its hidden states as `affinity: hidden` does; a block
with eager attention is refused: its keys are not an input of one node).

Shape (torch.fx `PassBase`): `requires` checks the sites are bound to this graph and no score
exists yet; `call` inserts the nodes (tagged `meta['deos_score']` = site name; an attention
score also records its attention node in `meta['deos_score_sdpa']`; the span is the keyword
`span`, which discretise rewrites when tokens shrink), then lints, recompiles
and propagates fake tensors; `ensures` checks every inserted score is `[B, N]`, every feature
`[B, N, d]`, and that no existing node reads them (the output is unchanged).
"""

from __future__ import annotations

from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from deos_dsl.compiler.blocks import BlockMap
from deos_dsl.compiler.graph_edit import insert_after, is_sdpa, refresh, sdpa_argument
from deos_dsl.compiler.positions import META_LIGHT, attention_node, light_attention, light_passes
from deos_dsl.compiler.site_scores import grid_side, mean_keys, query_attention, stream_score, weights_attention
from deos_dsl.compiler.sites import META_SCORE, META_SDPA, BoundSite, SiteScores
from deos_dsl.compiler.spans import reducible_span
from deos_dsl.errors import DeosCompileError
from deos_dsl.frontend import ir
from deos_dsl.frontend.vocab import SCORES


class InsertScores(PassBase):
    """Insert each site's score / features; the result is `self.scores[site.name]`."""

    def __init__(self, space: ir.Space, block_map: BlockMap, sites: list[BoundSite]) -> None:
        self.space, self.block_map, self.sites = space, block_map, sites
        self.scores: dict[str, SiteScores] = {}

    def requires(self, graph_module: fx.GraphModule) -> None:
        nodes = set(graph_module.graph.nodes)
        if graph_module is not self.block_map.graph_module or any(site.node not in nodes for site in self.sites):
            raise ValueError("insert_scores: the sites were bound to another graph")
        if any(META_SCORE in node.meta for node in nodes):
            raise ValueError("insert_scores: the graph already has site scores")

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        for site in self.sites:
            settings = self.space.sites[site.site_index]
            span = reducible_span(self.space, self.block_map, site.block)
            needs_attention = SCORES[settings.score.kind].attention or settings.operator.affinity == "keys"
            attention = self._attention(site, required=SCORES[settings.score.kind].attention)
            light: dict[fx.Node, fx.Node] = {}
            if attention is not None and needs_attention and site.position == "before":
                light = light_attention(site.block, site.name)
            features = None
            if settings.operator.affinity == "keys" and attention is not None:
                if not is_sdpa(attention):
                    raise DeosCompileError(f"site `{site.name}`: `affinity: keys` reads the keys of "
                                           f"scaled_dot_product_attention, and block `{site.block.path}` computes its "
                                           "attention eagerly (matmul + softmax)",
                                           "load the model with attn_implementation=\"sdpa\", or write `affinity: hidden`")
                key = sdpa_argument(attention, "key")
                features = insert_after(self._anchor(attention, light), mean_keys, (light.get(key, key),))
            score = self._score(site, settings.score, span, attention, features, light)
            for node in (score, features):
                if node is not None:
                    node.meta[META_SCORE] = site.name
                    if light:  # part of the light pass: it reads the block's side tensors too (its mask)
                        node.meta[META_LIGHT] = (site.name, site.block.path)
            self.scores[site.name] = SiteScores(score, features, span)
        refresh(self.block_map.traced)
        return PassResult(graph_module, True)

    def ensures(self, graph_module: fx.GraphModule) -> None:
        for name, inserted in self.scores.items():
            for node, ndim in ((inserted.score, 2), (inserted.features, 3)):
                if node is None:
                    continue
                if node.meta["val"].ndim != ndim or any(META_SCORE not in user.meta for user in node.users):
                    raise AssertionError(f"insert_scores: site {name}: bad score node {node.name}")
        passes = light_passes(graph_module.graph)
        for site in self.sites:
            light = passes.get(site.name, [])
            if light and (site.position != "before" or any(node.users.keys() - set(light) for node in light)):
                raise AssertionError(f"insert_scores: site {site.name}: its light attention feeds another node")

    @staticmethod
    def _attention(site: BoundSite, required: bool) -> fx.Node | None:
        """The block's last `scaled_dot_product_attention`, else its last eager attention softmax."""
        found = attention_node(site.block)
        if found is None and required:
            raise DeosCompileError(f"site `{site.name}`: block `{site.block.path}` has no attention to recompute "
                                   "attention scores from", "use `score: norm` on blocks without attention")
        return found

    @staticmethod
    def _anchor(attention: fx.Node, light: dict[fx.Node, fx.Node]) -> fx.Node:
        """Where a node reading the attention goes: after it, or after the light pass copying it."""
        return list(light.values())[-1] if light else attention

    def _score(self, site: BoundSite, score: ir.Score, span: tuple[int, int], attention: fx.Node | None,
               features: fx.Node | None, light: dict[fx.Node, fx.Node]) -> fx.Node | None:
        spec = SCORES[score.kind]
        if spec.attention and attention is not None and not is_sdpa(attention):
            probabilities = light.get(attention, attention)
            return insert_after(probabilities, weights_attention, (probabilities, score.option), {"span": span})
        if spec.attention:
            assert attention is not None
            args = [sdpa_argument(attention, name) for name in ("query", "key", "attn_mask", "is_causal", "scale")]
            args = [light.get(arg, arg) if isinstance(arg, fx.Node) else arg for arg in args]
            node = insert_after(features or self._anchor(attention, light), query_attention, (*args, score.option),
                                {"span": span})
            if not light:  # a light pass has its own mask (insert_relaxed biases it)
                node.meta[META_SDPA] = attention
            return node
        if spec.learned:
            return None
        if spec.grid and grid_side(span) is None:
            raise DeosCompileError(f"site `{site.name}`: score `{score.kind}` needs a square grid of reducible tokens, but "
                                   f"its span {span[0]}..{span[1]} holds {span[1] - span[0]}",
                                   f"use `score: {score.kind}` on a square patch grid")
        # features come from the block's attention (before a `mid` or `after` site's stream; after
        # the copies of a light pass, which follow a `before` site's stream)
        anchor = max(site.node, features) if features is not None else site.node
        return insert_after(anchor, stream_score, (site.node, score.kind, score.option),
                            {"span": span, "features": features})


def insert_scores(space: ir.Space, block_map: BlockMap, sites: list[BoundSite]) -> dict[str, SiteScores]:
    """Run `InsertScores` on the block map's graph; returns `site name -> SiteScores`."""
    inserted = InsertScores(space, block_map, sites)
    inserted(block_map.graph_module)
    return inserted.scores
