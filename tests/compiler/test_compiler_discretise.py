"""Passes 4-6 (discretise, cleanup, verify): the emitted graph of the baseline corners equals a
HAND-WRITTEN eager reference of the same reduction (patched forwards written here, independent of
the passes) to 1e-5, its intermediate tensors really have fewer tokens after each active site,
and static-length graphs are refused with a clear error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler_models import loaded, tensors
from deos_dsl.compiler import LoadedModel, build_block_map, trace
from deos_dsl.compiler.errors import DeosCompileError
from deos_dsl.compiler.graph_edit import sdpa_argument
from deos_dsl.compiler.trace import SYMBOLIC
from deos_dsl.frontend import ir
from deos_dsl.passes.bind_sites import bind_sites
from deos_dsl.passes.cleanup import cleanup, is_impure
from deos_dsl.passes.discretise import discretise
from deos_dsl.passes.insert_scores import META_SDPA, insert_scores
from deos_dsl.passes.verify import verify
from relaxed_cases import bundled, fresh_block_map, space_from

QWEN, LLAVA, SPAN = "hf:Qwen2Model", "hf:LlavaForConditionalGeneration", (2, 18)
FASTV_AT = "space fastv_at {{\n  tokens {{\n    reducible: visual\n  }}\n  site decoder.layers[{k}] {{\n    retain: 50%\n" \
           "    score: attention(query: last)\n    operator: prune\n  }}\n}}\n"


def emit(block_map, space: ir.Space):
    """Bind, score, discretise, clean up and verify; returns (plans, lengths, removed nodes)."""
    sites = bind_sites(space, block_map)
    scores = insert_scores(space, block_map, sites)
    plans, calls = discretise(space, block_map, sites, scores)
    removed = cleanup(block_map.graph_module)
    return plans, verify(block_map.traced, calls, plans), removed


# ---- hand-written references ---------------------------------------------------------------
def last_row_attention(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean over heads of the last query row's softmax attention (the last row sees every key)."""
    return torch.softmax((q[:, :, -1:] @ k.transpose(-1, -2)) * scale, dim=-1).mean(dim=(1, 2))


def prune_plan(scores: torch.Tensor, start: int, n_visual: int, keep: int) -> torch.Tensor:
    """Kept positions `[B, n']`: everything outside the visual span plus its top-`keep`, in order."""
    b, n = scores.shape
    top = scores[:, start:start + n_visual].topk(keep, dim=-1).indices.sort(dim=-1).values + start
    before, after = torch.arange(start).expand(b, -1), torch.arange(start + n_visual, n).expand(b, -1)
    return torch.cat([before, top, after], dim=1)


def take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))


def llama_decoder_reference(lm: nn.Module, h: torch.Tensor, keeps: dict[int, float]) -> torch.Tensor:
    """A Llama/Qwen2 decoder with FastV-style pruning after the layers in `keeps` (ratio of the
    visual tokens entering), RoPE positions and the causal mask following the kept tokens."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    b, n, _ = h.shape
    cos, sin = lm.rotary_emb(h, torch.arange(n)[None])
    positions, n_visual = torch.arange(n).expand(b, n), SPAN[1] - SPAN[0]
    for index, layer in enumerate(lm.layers):
        c, s = take(cos.expand(b, -1, -1), positions), take(sin.expand(b, -1, -1), positions)
        mask = (positions[:, :, None] >= positions[:, None, :])[:, None]  # causal over original positions
        out = layer(h, attention_mask=mask, position_embeddings=(c, s))
        if index in keeps:
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            shape = (b, h.shape[1], -1, attn.head_dim)
            q, k = attn.q_proj(x).view(shape).transpose(1, 2), attn.k_proj(x).view(shape).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, c, s)
            scores = last_row_attention(q, repeat_kv(k, attn.num_key_value_groups), attn.scaling)
            keep = math.ceil(keeps[index] * n_visual)
            kept = prune_plan(scores, SPAN[0], n_visual, keep)
            out, positions, n_visual = take(out, kept), positions.gather(1, kept), keep
        h = out
    return lm.norm(h)


def embedded_fastv_reference(model: nn.Module, pixels: torch.Tensor, question: torch.Tensor, k_layer: int) -> torch.Tensor:
    """The embedded VQA model with FastV after decoder layer `k_layer` (keep 50% of 144)."""
    x = model.decoder.embed(model.visual_tokens(pixels), question)
    for index, layer in enumerate(model.decoder.layers):
        out = layer(x)
        if index == k_layer:
            b, n, d = x.shape
            heads = layer.attn.heads
            q, k, _ = layer.attn.qkv(layer.norm1(x)).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            scores = last_row_attention(q, k, (d // heads) ** -0.5)
            out = take(out, prune_plan(scores, 0, 144, 72))
        x = out
    return model.head(model.decoder.norm(x)[:, -1])


def tome_vision_reference(vision: nn.Module, pixels: torch.Tensor, r: int) -> torch.Tensor:
    """The embedded vision encoder with ToMe after every layer: bipartite matching on head-mean
    keys (even patch offsets merge into odd ones), size-weighted merge of the `r` most similar,
    proportional attention (`+ log size`), CLS never merged."""
    x = vision.patch_embed(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([vision.cls.expand(x.shape[0], -1, -1), x], dim=1) + vision.pos
    size = torch.ones(x.shape[0], x.shape[1])
    for layer in vision.layers:
        b, n, d = x.shape
        heads = layer.attn.heads
        q, k, v = layer.attn.qkv(layer.norm1(x)).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        bias = size.log()[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + layer.attn.proj(attended.transpose(1, 2).reshape(b, n, d))
        x = x + layer.mlp(layer.norm2(x))
        metric = F.normalize(k.mean(dim=1)[:, 1:], dim=-1)
        a, bb = metric[:, 0::2], metric[:, 1::2]
        best, dest = (a @ bb.transpose(-1, -2)).max(dim=-1)
        merged = best.argsort(dim=-1, descending=True, stable=True)[:, :r]  # most similar A tokens go
        out_x, out_size = [], []
        for i in range(b):
            tokens, sizes = x[i, 1:].clone(), size[i, 1:].clone()
            weighted = tokens * sizes[:, None]
            gone = set(merged[i].tolist())
            for j in merged[i].tolist():
                target = 2 * int(dest[i, j]) + 1
                weighted[target] += weighted[2 * j]
                sizes[target] += sizes[2 * j]
            keep = [p for p in range(tokens.shape[0]) if not (p % 2 == 0 and p // 2 in gone)]
            out_x.append(torch.cat([x[i, :1], weighted[keep] / sizes[keep][:, None]]))
            out_size.append(torch.cat([size[i, :1], sizes[keep]]))
        x, size = torch.stack(out_x), torch.stack(out_size)
    return vision.norm(x)


# ---- tests --------------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "keeps"), [(2, {2: 0.5}), (0, {0: 0.5})], ids=["fastv-K2", "fastv-K0"])
def test_qwen2_fastv_equals_reference_and_shrinks(k: int, keeps: dict[int, float], tmp_path: Path):
    block_map = fresh_block_map(QWEN)
    space = bundled("fastv.deos", "fastv") if k == 2 else space_from(FASTV_AT.format(k=k), tmp_path)
    plans, lengths, _ = emit(block_map, space)
    (plan,) = plans.values()
    assert (plan.active, plan.span, plan.keep) == (True, SPAN, 8)
    assert list(lengths.values()) == [(24, 16)]
    model = loaded(QWEN)
    (got,) = tensors(block_map.traced.run())
    with torch.no_grad():
        want = llama_decoder_reference(model.model, model.kwargs["inputs_embeds"], keeps)
    assert got.shape == (2, 16, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    later = [b for b in block_map.stack("decoder").blocks if b.index > k]
    for block in later:  # every stream-shaped intermediate of later layers has 16 tokens
        sizes = {n.meta["val"].shape[1] for n in block.nodes if getattr(n.meta.get("val"), "ndim", 0) == 3}
        assert sizes == {16}


def test_qwen2_pyramiddrop_chains_three_sites():
    block_map = fresh_block_map(QWEN)
    plans, lengths, removed = emit(block_map, bundled("pyramiddrop.deos", "pyramiddrop"))
    assert [(p.span, p.keep) for p in plans.values()] == [((2, 18), 8), ((2, 10), 4), ((2, 6), 2)]
    assert list(lengths.values()) == [(24, 16), (16, 12), (12, 10)]
    assert any(name.startswith("getitem") for name in removed)  # unused site outputs
    model = loaded(QWEN)
    (got,) = tensors(block_map.traced.run())
    with torch.no_grad():
        want = llama_decoder_reference(model.model, model.kwargs["inputs_embeds"], {0: 0.5, 1: 0.5, 2: 0.5})
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_llava_fastv_equals_reference(tmp_path: Path):
    block_map = fresh_block_map(LLAVA)
    emit(block_map, space_from(FASTV_AT.format(k=0), tmp_path))
    model = loaded(LLAVA)
    got = tensors(block_map.traced.run())[0]
    captured: dict[str, torch.Tensor] = {}
    language_model = model.model.model.language_model
    def capture(_: nn.Module, args: tuple, kwargs: dict) -> None:
        captured["embeds"] = kwargs["inputs_embeds"]

    hook = language_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            model.model(**model.kwargs)
            want = model.model.lm_head(llama_decoder_reference(language_model, captured["embeds"], {0: 0.5}))
    finally:
        hook.remove()
    assert got.shape == (2, 16, 128)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_embedded_fastv_on_the_symbolic_graph_equals_reference():
    block_map = fresh_block_map("embedded", SYMBOLIC)
    _, lengths, _ = emit(block_map, bundled("fastv.deos", "fastv"))
    assert list(lengths.values()) == [(156, 84)]
    model = loaded("embedded")
    (got,) = tensors(block_map.traced.run())
    with torch.no_grad():
        want = embedded_fastv_reference(model.model, *model.args, k_layer=2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_tome_on_the_embedded_vision_encoder_equals_reference():
    model = loaded("embedded")
    vision = model.model.vision
    loaded_vision = LoadedModel("vision", vision, (model.args[0],), spans={"vision": (1, 145)}, roles={"vision": "layers"})
    block_map = build_block_map(trace(vision, loaded_vision.args, tracers=(SYMBOLIC,)), loaded_vision.roles,
                                loaded_vision.spans)
    plans, lengths, _ = emit(block_map, bundled("tome.deos", "tome"))
    assert list(lengths.values()) == [(145, 129), (129, 113), (113, 97), (97, 81)]
    assert all(p.proportional and p.bipartite for p in plans.values())
    (got,) = tensors(block_map.traced.run())
    with torch.no_grad():
        want = tome_vision_reference(vision, model.args[0], 16)
    assert got.shape == (2, 81, 128)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "file", "space"), [("embedded", "fastv.deos", "fastv"),
                                                      ("hf:CLIPVisionModel", "tome.deos", "tome")])
def test_static_length_exports_are_refused(name: str, file: str, space: str):
    block_map = fresh_block_map(name)
    sites = bind_sites(bundled(file, space), block_map)
    scores = insert_scores(bundled(file, space), block_map, sites)
    with pytest.raises(DeosCompileError, match="STATIC sequence length") as caught:
        discretise(bundled(file, space), block_map, sites, scores)
    assert "symbolic_trace" in caught.value.hint


def test_cleanup_keeps_impure_nodes():
    block_map = fresh_block_map(QWEN)
    asserts = [n.name for n in block_map.graph_module.graph.nodes if is_impure(n) and n.op != "placeholder"]
    assert asserts and any("_assert" in name for name in asserts)
    emit(block_map, bundled("fastv.deos", "fastv"))
    names = {n.name for n in block_map.graph_module.graph.nodes}
    assert set(asserts) <= names


MERGE_THEN_CLS_PRUNE = """space merge_then_prune {
  tokens {
    reducible: visual
    protected: cls
  }
  site vision.layers[0] {
    activate: on
    retain: drop 16 tokens
    score: similarity(to: tokens)
    operator: merge(proportional: on, affinity: keys)
  }
  site vision.layers[2] {
    activate: on
    retain: 50%
    score: attention(query: cls)
    operator: prune
  }
}
"""


def test_recomputed_scores_read_the_mask_their_attention_uses(tmp_path: Path):
    """A proportional site biases later attention with `log size`; the attention score of a later
    site, recomputed from one of those attention nodes, must read the same biased mask."""
    model = loaded("embedded")
    vision = model.model.vision
    block_map = build_block_map(trace(vision, (model.args[0],), tracers=(SYMBOLIC,)), {"vision": "layers"},
                                {"vision": (1, 145)})
    _, lengths, _ = emit(block_map, space_from(MERGE_THEN_CLS_PRUNE, tmp_path))
    assert list(lengths.values()) == [(145, 129), (129, 65)]
    recomputed = [node for node in block_map.graph_module.graph.nodes if META_SDPA in node.meta]
    assert recomputed, "the pruning site's attention score was not recomputed"
    for score in recomputed:
        attention = score.meta[META_SDPA]
        assert score.args[2] is sdpa_argument(attention, "attn_mask") is not None
        assert score.args[3] is False
