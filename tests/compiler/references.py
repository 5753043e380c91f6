"""HAND-WRITTEN eager references of the bundled corners (`spaces/*.deos`), written here in plain
torch independently of the passes: each is the model itself run eagerly, its blocks' outputs
reduced by a forward hook, a patched forward, or (where the reduction changes the attention of
later blocks, ToMe's `+ log size`) the block re-run by hand.

- scores: `row_attention`, the softmax attention the keys receive from ONE query row (the last
  token, CLS = row 0, or the MEAN of the text queries: the tokens after the visual span), mean
  over heads (the language's `attention(query: ...)`); `rater_attention`, SparseVLM's text raters;
- decoder corners (`VisualSpan`): per decoder layer, a `LayerReduce(out, q, k, scale) ->
  (out', kept)` over the visual span: `prune` (FastV, PyramidDrop, SparseVLM without recycling), `reweight`,
  `recycle` (SparseVLM), with the token sizes carried from site to site; drivers
  `llama_decoder_reference` (HF Llama / Qwen2) and `embedded_decoder` (forward hooks);
- vision corners: per encoder layer, a `VisionStep(out, cls attention, head-mean keys, sizes)
  -> (out', kept, sizes')`: `tome`, `evit`, `visionzip`, `cls_prune`; drivers `embedded_vision`
  (the embedded encoder re-run by hand) and `patched_encoder` (HF encoder layers patched);
- the rest of a VLM around a reduced stack: `answer_from_patches` (embedded),
  `with_placeholders` (HF LLaVA), `pool_2x2` / `pooled_reference` (2x2 pooling).
`kept` is always, per output token, the input position whose side tensors (RoPE row, learned
position) it takes: its own, a merged token's destination's, a fused token's the last one's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LayerReduce = Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor]]
SpanOperator = Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor, Tensor]]
VisionStep = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]
GRID = 12  # the embedded model's 12 x 12 patch grid


# ---- tokens and scores --------------------------------------------------------------------
def take(t: Tensor, idx: Tensor) -> Tensor:
    """`t [B, N, D]` at the positions `idx [B, N']`."""
    return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))


def keep_of(ratio: float, n: int) -> int:
    """`ceil(ratio * n)` (on the product rounded to 9 decimals: 0.6 * 80 keeps 48)."""
    return math.ceil(round(ratio * n, 9))


def row_attention(q: Tensor, k: Tensor, scale: float, rows: slice, bias: Tensor | None = None) -> Tensor:
    """`[B, N]`: softmax attention of the MEAN query of `q [B, H, N, dh]`'s `rows` over the keys
    `k [B, H, N, dh]` (plus the key `bias [B, N]`), mean over heads. Rows at the end (last,
    text) see every key under a causal mask, so none is applied."""
    logits = q[:, :, rows].mean(dim=2, keepdim=True) @ k.transpose(-1, -2) * scale
    if bias is not None:
        logits = logits + bias[:, None, None, :]
    return torch.softmax(logits, dim=-1).mean(dim=(1, 2))


def rater_attention(q: Tensor, k: Tensor, scale: float, start: int, n_visual: int) -> Tensor:
    """`[B, N]`: SparseVLM's rating of the keys. Every query row's causal softmax attention (mean
    over heads); the text rows (after the visual span `[start, start + n_visual)`) whose mean
    attention to the visual tokens is at least the text rows' mean are the raters; a key scores
    the raters' mean attention to it."""
    n = q.shape[2]
    logits = (q @ k.transpose(-1, -2) * scale).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    attention = torch.softmax(logits, dim=-1).mean(dim=1)  # [B, N, N]
    text = attention[:, start + n_visual:]
    relevance = text[:, :, start:start + n_visual].mean(dim=-1)  # [B, T]
    raters = relevance >= relevance.mean(dim=1, keepdim=True)
    return torch.stack([text[i][raters[i]].mean(dim=0) for i in range(q.shape[0])])


def prune_plan(scores: Tensor, start: int, n_visual: int, keep: int) -> Tensor:
    """Kept positions `[B, n']`: everything outside the visual span plus its top-`keep`, in order."""
    b, n = scores.shape
    top = scores[:, start:start + n_visual].topk(keep, dim=-1).indices.sort(dim=-1).values + start
    before, after = torch.arange(start).expand(b, -1), torch.arange(start + n_visual, n).expand(b, -1)
    return torch.cat([before, top, after], dim=1)


# ---- decoder corners over the visual span ---------------------------------------------------
def prune(x: Tensor, sizes: Tensor, scores: Tensor, ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the `ceil(ratio * n)` best-scored span tokens, in order (FastV, PyramidDrop, SparseVLM without recycling)."""
    top = scores.topk(keep_of(ratio, scores.shape[1]), dim=-1).indices.sort(dim=-1).values
    return take(x, top), sizes.gather(1, top), top


def reweight(rho: float) -> SpanOperator:
    """Keep every span token, rescaled by `1 + rho * s / mean(s)` (EOS's reweight regime)."""
    def operator(x: Tensor, sizes: Tensor, scores: Tensor, ratio: float) -> tuple[Tensor, Tensor, Tensor]:
        assert ratio == 1.0
        shat = scores / scores.mean(dim=1, keepdim=True)
        return x * (1 + rho * shat)[..., None], sizes, torch.arange(x.shape[1]).expand(x.shape[0], -1)
    return operator


def recycle(share: float, tau: float) -> SpanOperator:
    """SparseVLM: keep the `ceil(ratio * n)` best span tokens; of the dropped ones, the best
    `ceil(share * dropped)` go to the kept tokens with `softmax_i(cos(h_j, h_i) / tau)` on the
    hidden states, merged size-weighted (sizes grow); prune the rest."""
    def operator(x: Tensor, sizes: Tensor, scores: Tensor, ratio: float) -> tuple[Tensor, Tensor, Tensor]:
        n = scores.shape[1]
        keep = keep_of(ratio, n)
        order = scores.argsort(dim=-1, descending=True)
        kept, moved = order[:, :keep].sort(dim=-1).values, order[:, keep:keep + keep_of(share, n - keep)]
        a, d, sa, sd = take(x, kept), take(x, moved), sizes.gather(1, kept), sizes.gather(1, moved)
        p = torch.softmax(F.normalize(d, dim=-1) @ F.normalize(a, dim=-1).transpose(1, 2) / tau, dim=-1) * sd[..., None]
        merged = (sa[..., None] * a + p.transpose(1, 2) @ d) / (sa + p.sum(dim=1))[..., None]
        return merged, sa + p.sum(dim=1), kept
    return operator


class VisualSpan:
    """The visual span `[start, start + n)` of a decoder through the sites of one space: the span
    shrinks and the token sizes carry on from site to site."""

    def __init__(self, start: int, n: int) -> None:
        self.start, self.n, self.sizes = start, n, None

    def sites(self, query: str, operator: SpanOperator, *ratios: float) -> LayerReduce:
        """The sites of one layer: each site's `operator` at its `ratio` of the span entering it,
        every site ranking by the layer's attention from the `last` token or the mean `text`
        query (computed once on the layer's input)."""
        def reduce(out: Tensor, q: Tensor, k: Tensor, scale: float) -> tuple[Tensor, Tensor]:
            b, n = out.shape[:2]
            if query == "raters":
                scores = rater_attention(q, k, scale, self.start, self.n)
            else:
                scores = row_attention(q, k, scale, slice(-1, None) if query == "last" else slice(self.start + self.n, None))
            sizes = torch.ones(b, n) if self.sizes is None else self.sizes
            kept = torch.arange(n).expand(b, -1)
            for ratio in ratios:
                start, end = self.start, self.start + self.n
                span_scores = scores.gather(1, kept)[:, start:end]
                x, s, step = operator(out[:, start:end], sizes[:, start:end], span_scores, ratio)
                out = torch.cat([out[:, :start], x, out[:, end:]], dim=1)
                sizes = torch.cat([sizes[:, :start], s, sizes[:, end:]], dim=1)
                n_now = kept.shape[1]
                kept = kept.gather(1, torch.cat([torch.arange(start).expand(b, -1), step + start,
                                                 torch.arange(end, n_now).expand(b, -1)], dim=1))
                self.n = step.shape[1]
            self.sizes = sizes
            return out, kept
        return reduce


def llama_decoder_reference(lm: nn.Module, h: Tensor, reduce: Mapping[int, LayerReduce], at: str = "after") -> Tensor:
    """A Llama/Qwen2 decoder `lm` on `h` with `reduce[i](stream, q, k, scale)` after layer `i`
    (`at="before"`: on the stream ENTERING layer `i`, PyramidDrop's light attention pass), `q`,
    `k` layer `i`'s post-RoPE queries and keys on its input (key heads repeated); RoPE positions
    and the causal mask follow the kept tokens."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    b, n, _ = h.shape
    cos, sin = lm.rotary_emb(h, torch.arange(n)[None])
    positions = torch.arange(n).expand(b, n)

    def qk(layer: nn.Module, h: Tensor, c: Tensor, s: Tensor) -> tuple[Tensor, Tensor, float]:
        attn, x = layer.self_attn, layer.input_layernorm(h)
        shape = (b, h.shape[1], -1, attn.head_dim)
        q, k = apply_rotary_pos_emb(attn.q_proj(x).view(shape).transpose(1, 2), attn.k_proj(x).view(shape).transpose(1, 2), c, s)
        return q, repeat_kv(k, attn.num_key_value_groups), attn.scaling

    def rows(positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mask = (positions[:, :, None] >= positions[:, None, :])[:, None]  # causal over original positions
        return take(cos.expand(b, -1, -1), positions), take(sin.expand(b, -1, -1), positions), mask

    for index, layer in enumerate(lm.layers):
        c, s, mask = rows(positions)
        if index in reduce and at == "before":
            h, kept = reduce[index](h, *qk(layer, h, c, s))
            positions = positions.gather(1, kept)
            c, s, mask = rows(positions)
        out = layer(h, attention_mask=mask, position_embeddings=(c, s))
        if index in reduce and at == "after":
            out, kept = reduce[index](out, *qk(layer, h, c, s))
            positions = positions.gather(1, kept)
        h = out
    return lm.norm(h)


@contextmanager
def reduced_after(layers: nn.ModuleList, reduce: Mapping[int, Callable[[Tensor, Tensor], Tensor]]) -> Iterator[None]:
    """While inside, layer `i`'s output is `reduce[i](layer input, layer output)`: the embedded
    model's blocks read their sizes from their input, so the fewer tokens flow on."""
    hooks = [layers[i].register_forward_hook(lambda _, args, out, f=f: f(args[0], out)) for i, f in reduce.items()]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def embedded_qk(layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, float]:
    """q, k `[B, H, N, dh]` of an embedded block's attention on its input `x`, and the scale."""
    b, n, d = x.shape
    heads = layer.attn.heads
    q, k, _ = layer.attn.qkv(layer.norm1(x)).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    return q, k, (d // heads) ** -0.5


@contextmanager
def reduced_before(layers: nn.ModuleList, reduce: Mapping[int, LayerReduce]) -> Iterator[None]:
    """While inside, layer `i` runs on `reduce[i](its input, q, k, scale)`, ranked by its own
    attention on that input (a light pass of its q and k)."""
    def before(layer: nn.Module, args: tuple[Tensor, ...], f: LayerReduce) -> tuple[Tensor, ...]:
        return (f(args[0], *embedded_qk(layer, args[0]))[0], *args[1:])
    hooks = [layers[i].register_forward_pre_hook(lambda module, args, f=f: before(module, args, f)) for i, f in reduce.items()]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def embedded_decoder(layers: nn.ModuleList, reduce: Mapping[int, LayerReduce], at: str = "after"):
    """`reduced_after` the embedded decoder's layers: `reduce[i](output, q, k, scale)` on layer `i`'s
    attention (its causal mask follows the kept tokens: they stay in order); `at="before"`:
    `reduced_before`."""
    if at == "before":
        return reduced_before(layers, reduce)

    def after(layer: nn.Module, f: LayerReduce) -> Callable[[Tensor, Tensor], Tensor]:
        return lambda x, out: f(out, *embedded_qk(layer, x))[0]
    return reduced_after(layers, {i: after(layers[i], f) for i, f in reduce.items()})


# ---- vision corners -----------------------------------------------------------------------
def tome_merge(x: Tensor, size: Tensor, index: Tensor, keys: Tensor, start: int,
               r: int) -> tuple[Tensor, Tensor, Tensor]:
    """ToMe's bipartite soft matching as its paper describes it, the tokens before `start` (a CLS)
    protected: the sequence alternates into sets A (even positions) and B (odd); on the
    head-mean `keys [B, N, dh]`, each A token's best cosine match in B; the `r` A tokens with the
    most similar matches (a protected token never) are averaged, weighted by `size [B, N]`, into
    their match. Returns `x [B, N - r, D]` in the original order, the sizes and each token's
    original position `index` (a merged token's is its destination's)."""
    metric = F.normalize(keys, dim=-1)
    similarity = metric[:, 0::2] @ metric[:, 1::2].transpose(-1, -2)
    a_positions, b_positions = torch.arange(0, x.shape[1], 2), torch.arange(1, x.shape[1], 2)
    similarity[:, a_positions < start] = -math.inf
    similarity[:, :, b_positions < start] = -math.inf
    best, dest = similarity.max(dim=-1)
    merged = best.argsort(dim=-1, descending=True, stable=True)[:, :r]  # most similar A tokens go
    out_x, out_size, out_index = [], [], []
    for i in range(x.shape[0]):
        weighted, sizes = x[i] * size[i][:, None], size[i].clone()
        for j in merged[i].tolist():
            source, target = int(a_positions[j]), int(b_positions[dest[i, j]])
            weighted[target] += weighted[source]
            sizes[target] += sizes[source]
        gone = {int(a_positions[j]) for j in merged[i].tolist()}
        keep = [p for p in range(x.shape[1]) if p not in gone]
        out_x.append(torch.where(torch.arange(x.shape[1])[keep, None] < start, x[i, keep],
                                 weighted[keep] / sizes[keep][:, None]))
        out_size.append(sizes[keep])
        out_index.append(index[i, keep])
    return torch.stack(out_x), torch.stack(out_size), torch.stack(out_index)


def tome(start: int, r: int) -> VisionStep:
    """ToMe (`tome_merge`) of `r` tokens, capped as ToMe caps it: at most half the tokens after `start`."""
    def step(out: Tensor, attention: Tensor, keys: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n = sizes.shape
        x, sizes, kept = tome_merge(out, sizes, torch.arange(n).expand(b, n), keys, start, min(r, (n - start) // 2))
        return x, kept, sizes
    return step


def evit(start: int, ratio: float) -> VisionStep:
    """EViT at a block output: [the tokens before `start`, the `ceil(ratio * n)` tokens after it
    that the CLS row attends most (in order), ONE fused token `sum_j a_j x_j` of the others
    (unnormalised), at the last token's position]."""
    def step(out: Tensor, attention: Tensor, keys: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n = attention.shape
        a, tokens = attention[:, start:], out[:, start:]
        top = a.topk(keep_of(ratio, n - start), dim=-1).indices.sort(dim=-1).values
        inattentive = torch.ones_like(a, dtype=torch.bool).scatter(1, top, False)
        fused = (tokens * (a * inattentive)[..., None]).sum(dim=1, keepdim=True)
        kept = torch.cat([torch.arange(start).expand(b, -1), top + start, torch.full((b, 1), n - 1)], dim=1)
        return torch.cat([out[:, :start], take(tokens, top), fused], dim=1), kept, torch.ones(kept.shape)
    return step


def visionzip(start: int, ratio: float, contextual: int) -> VisionStep:
    """VisionZip at a block output, one image at a time, as its release computes it: the tokens
    before `start`; of those after it, the `ceil(ratio * n)` dominant ones the CLS row attends
    most and `contextual` targets (every `n_rest // contextual`-th of the others, in order); every
    other token joins the target its key is most similar to, and a target becomes
    `target + mean(joiners)` (itself without joiners). Original order."""
    def step(out: Tensor, attention: Tensor, keys: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rows, kept = [], []
        for image in range(out.shape[0]):
            a, x = attention[image, start:], out[image, start:]
            chosen = set(a.topk(keep_of(ratio, a.shape[0])).indices.tolist())
            rest = [p for p in range(a.shape[0]) if p not in chosen]
            targets = rest[::max(1, len(rest) // contextual)][:contextual]
            others = [p for p in rest if p not in targets]
            unit = F.normalize(keys[image, start:], dim=-1)
            nearest = (unit[others] @ unit[targets].T).argmax(dim=-1).tolist()
            tokens = {p: x[p] for p in chosen}
            for slot, target in enumerate(targets):
                joiners = [p for p, t in zip(others, nearest) if t == slot]
                tokens[target] = x[target] + x[joiners].mean(dim=0) if joiners else x[target]
            rows.append(torch.cat([out[image, :start], torch.stack([tokens[p] for p in sorted(tokens)])]))
            kept.append(torch.tensor([*range(start), *(start + p for p in sorted(tokens))]))
        kept_t = torch.stack(kept)
        return torch.stack(rows), kept_t, torch.ones(kept_t.shape)
    return step


def cls_prune(start: int, keep: int) -> VisionStep:
    """Keep the tokens before `start` and the `keep` after it the CLS row attends most, in order."""
    def step(out: Tensor, attention: Tensor, keys: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        kept = prune_plan(attention, start, out.shape[1] - start, keep)
        return take(out, kept), kept, sizes.gather(1, kept)
    return step


def embedded_vision(vision: nn.Module, pixels: Tensor, steps: Mapping[int, VisionStep],
                    at: str = "after") -> tuple[Tensor, Tensor]:
    """The embedded vision encoder re-run by hand with `steps[i]` after layer `i` (`at="mid"`:
    between its attention and its MLP), every layer attending with the `+ log size` key bias of
    the sizes so far (0 while they are 1); a step sees the layer's CLS-row attention (same bias)
    and head-mean keys. Returns the output and each output token's original position `[B, n]`."""
    x = vision.patch_embed(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([vision.cls.expand(x.shape[0], -1, -1), x], dim=1) + vision.pos
    size = torch.ones(x.shape[0], x.shape[1])
    positions = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    for index, layer in enumerate(vision.layers):
        b, n, d = x.shape
        q, k, v = layer.attn.qkv(layer.norm1(x)).reshape(b, n, 3, layer.attn.heads, -1).permute(2, 0, 3, 1, 4)
        bias = size.log()
        x = x + layer.attn.proj(F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None, None, :])
                                .transpose(1, 2).reshape(b, n, d))
        if index in steps and at == "mid":
            x, size, positions = _step(steps[index], x, q, k, bias, size, positions)
        x = x + layer.mlp(layer.norm2(x))
        if index in steps and at == "after":
            x, size, positions = _step(steps[index], x, q, k, bias, size, positions)
    return vision.norm(x), positions


def _step(step: VisionStep, x: Tensor, q: Tensor, k: Tensor, bias: Tensor, size: Tensor,
          positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One vision step on `x` from its layer's `q`, `k` (CLS row, `bias`): (x', sizes', positions')."""
    attention = row_attention(q, k, q.shape[-1] ** -0.5, slice(0, 1), bias)
    x, kept, size = step(x, attention, k.mean(dim=1), size)
    return x, size, positions.gather(1, kept)


# (pre-attention norm, attention, pre-MLP norm, MLP) submodule names of the HF encoder layers the
# tests patch between attention and MLP, as the model in hand names them (checked, never assumed)
LAYOUTS = (("layer_norm1", "self_attn", "layer_norm2", "mlp"), ("layernorm_before", "attention", "layernorm_after", "mlp"))


def halves(layer: nn.Module) -> tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """A pre-norm encoder layer as its two residual halves: `h + attention(norm1(h), mask)` and
    `h + mlp(norm2(h))` (eval mode: dropout is the identity)."""
    names = next((names for names in LAYOUTS if all(hasattr(layer, name) for name in names)), None)
    assert names is not None, f"no known layout of {type(layer).__name__}: add its submodule names to LAYOUTS"
    norm1, attention, norm2, mlp = (getattr(layer, name) for name in names)
    return (lambda h, mask: h + attention(norm1(h), mask)[0]), (lambda h: h + mlp(norm2(h)))


@contextmanager
def patched_encoder(layers: nn.ModuleList, heads: int, steps: Mapping[int, VisionStep], at: str = "after") -> Iterator[None]:
    """Every HF encoder layer of `layers` patched: it attends with the `+ log size` key bias
    (passed as its additive attention mask; sizes start at 1 in the first layer), then, when
    `steps` has it, reduces its output (`at="mid"`: its stream between attention and MLP, the
    layer run as its two `halves`) by the step, which sees the CLS-row attention and the
    head-mean keys computed from the outputs of its `q_proj` / `k_proj`. The HF model around the
    layers runs unchanged."""
    sizes: list[Tensor] = []

    def patched(index: int, layer: nn.Module, forward: Callable[..., Any]) -> Callable[..., Tensor]:
        projections = {name.rsplit(".", 1)[-1]: module for name, module in layer.named_modules()
                       if name.endswith(("q_proj", "k_proj"))}

        def run(hidden: Tensor, attention_mask: None = None, *args: Any, **kwargs: Any) -> Tensor:
            assert attention_mask is None  # eager transformers skips the all-true mask
            b, n, _ = hidden.shape
            size = torch.ones(b, n) if index == 0 else sizes[-1]
            seen: dict[str, Tensor] = {}
            hooks = [module.register_forward_hook(lambda _, __, out, name=name: seen.__setitem__(name, out))
                     for name, module in projections.items()]
            mask = size.log()[:, None, None, :].expand(b, 1, n, n)
            mid = index in steps and at == "mid"
            try:
                out = halves(layer)[0](hidden, mask) if mid else forward(hidden, mask, *args, **kwargs)
            finally:
                for hook in hooks:
                    hook.remove()
            if index in steps:
                q, k = (seen[name].view(b, n, heads, -1).transpose(1, 2) for name in ("q_proj", "k_proj"))
                out, size, _ = _step(steps[index], out, q, k, size.log(), size, torch.arange(n).expand(b, n))
            if mid:
                out = halves(layer)[1](out)
            sizes.append(size)
            return out

        return run

    for index, layer in enumerate(layers):
        layer.forward = patched(index, layer, layer.forward)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


# ---- the rest of a VLM around a reduced stack ----------------------------------------------
def answer_from_patches(model: nn.Module, vision: Tensor, question: Tensor, positions: Tensor,
                        reduce: Mapping[int, LayerReduce] | None = None) -> Tensor:
    """The rest of the embedded model after the vision encoder's output `vision` (CLS first) whose
    tokens come from the vision-stream `positions`: CLS dropped, projector, the decoder input
    built PER EXAMPLE with `Decoder.embed(visual_index=)` (each visual token at its kept patch's
    position), the decoder (with `embedded_decoder`'s `reduce`), the head."""
    visual, patches = model.projector(vision[:, 1:]), positions[:, 1:] - 1
    x = torch.cat([model.decoder.embed(visual[i:i + 1], question[i:i + 1], visual_index=patches[i])
                   for i in range(visual.shape[0])])
    with embedded_decoder(model.decoder.layers, reduce or {}):
        return model.answer(x)


def with_placeholders(llava: nn.Module, ids: Tensor, n: int) -> Tensor:
    """`ids` as a processor writes them for `n` image tokens per row (its last placeholders dropped)."""
    image = ids == llava.config.image_token_id
    return ids[~(image & (image.cumsum(dim=1) > n))].view(ids.shape[0], -1)


def pool_2x2(features: Tensor) -> Tensor:
    """2x2 average pooling of a row-major square token grid `[B, s * s, D] -> [B, s * s / 4, D]`,
    windows in row-major order (the order of their top-left tokens, which keep their place)."""
    b, n, d = features.shape
    side = math.isqrt(n)
    return F.avg_pool2d(features.transpose(1, 2).reshape(b, d, side, side), 2).flatten(2).transpose(1, 2)


def pooled_reference(model: nn.Module, pixels: Tensor, question: Tensor) -> Tensor:
    """The embedded model with its projected 12x12 grid pooled 2x2, each pooled token at the
    decoder position of its window's top-left patch; then the decoder and the head."""
    pooled = pool_2x2(model.visual_tokens(pixels))
    corners = torch.tensor([2 * row * GRID + 2 * col for row in range(GRID // 2) for col in range(GRID // 2)])
    x = torch.cat([model.decoder.embed(pooled[i:i + 1], question[i:i + 1], visual_index=corners)
                   for i in range(pooled.shape[0])])
    return model.answer(x)
