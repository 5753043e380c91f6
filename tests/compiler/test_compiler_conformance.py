"""The compiler's conformance matrix: for every conformance model (the embedded model; tiny random
HF CLIP, SigLIP and ViT encoders, LLaVA and Qwen2) and every bundled baseline space that binds to
it, the emitted graph (`compile_emitted`, by the route expected for the model) (b) equals a
HAND-WRITTEN eager reference of the same reduction (`references.py`: the model itself with its
blocks patched, independent of the passes) to 1e-5, its output and the stream each site layer
leaves, and (c) every block of the emitted graph runs on its dense token count less the tokens
the active sites before it removed: the intermediates really have fewer tokens.

Where a site sits follows the space: `layers[p%]` is layer `floor(p% * depth)`, one site per
listed layer; the tiny HF decoders (3 layers) take SparseVLM's first two sites both on layer 0.
SigLIP has no CLS: its `attention(query: cls)` is the first token's row, every token reducible.
LLaVA feeds its decoder the tower's layer -2 without CLS, so the bundled VisionZip (on the tower's
last layer) is refused there by name and runs at `[-2]`, its published site, and the bundled
ToMe's 16 tokens are capped to half of the 16, 8, 4 patches entering each layer.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor, nn

from compiler_models import loaded, tensors
from deos_dsl.compiler.blocks import module_paths
from deos_dsl.compiler.masking import gather_mask
from deos_dsl.compiler.stack_retrace import StackGraph
from deos_dsl.compiler.token_index import gather_side
from deos_dsl.compiler.trace import EXPORT, SYMBOLIC
from deos_dsl.ops import gather_tokens
from deos_dsl.errors import SpaceError
from deos_dsl.frontend import ir
from deos_dsl.pipeline import Emitted, compile_emitted
from references import (
    LayerReduce,
    VisionStep,
    VisualSpan,
    answer_from_patches,
    embedded_decoder,
    embedded_vision,
    evit,
    llama_decoder_reference,
    patched_encoder,
    pool_2x2,
    pooled_reference,
    prune,
    recycle,
    reweight,
    tome,
    visionzip,
    with_placeholders,
)
from relaxed_cases import bundled

CLIP, SIGLIP, VIT = "hf:CLIPVisionModel", "hf:SiglipVisionModel", "hf:ViTModel"
LLAVA, QWEN = "hf:LlavaForConditionalGeneration", "hf:Qwen2Model"
HF_VISUAL = (2, 16)  # the tiny HF decoders' visual span: 16 image tokens from position 2
# model -> its stacks (module-list paths) and their dense stream lengths: the blocks (c) checks
STACKS = {
    "embedded": {"vision.layers": 145, "decoder.layers": 156},
    CLIP: {"encoder.layers": 65}, SIGLIP: {"encoder.layers": 64}, VIT: {"layers": 65},
    LLAVA: {"model.vision_tower.encoder.layers": 17, "model.language_model.layers": 24},
    QWEN: {"layers": 24},
}
CLS = {"embedded": 1, CLIP: 1, SIGLIP: 0, VIT: 1, LLAVA: 1}  # tokens before the patches
# the route each emits by (`compile_emitted`): the whole graph (export; fx where export fixes the
# length), or the export of the sites' stack alone with a dynamic length; LLaVA by the sites' stack
CONTAINER = "torch.export (stack container `{}` on its input, dynamic length)"
ROUTES = {
    "embedded": SYMBOLIC, QWEN: EXPORT, CLIP: CONTAINER.format("encoder"), SIGLIP: CONTAINER.format("encoder"),
    VIT: "torch.export (blocks of `layers` chained on their stream, dynamic length)",
    (LLAVA, "decoder"): EXPORT, (LLAVA, "vision"): CONTAINER.format("model.vision_tower.encoder"),
    (LLAVA, "projector"): "torch.export (module `model.multi_modal_projector` alone on its input, dynamic length)",
}


def at(depth: int, percent: float) -> int:
    """The layer `layers[percent%]` selects in a stack of `depth` layers."""
    return int(percent / 100 * depth)


def sparsevlm(depth: int) -> list[tuple[int, float]]:
    return [(at(depth, 6.25), 0.55), (at(depth, 18.75), 0.6), (at(depth, 46.875), 0.5)]


# decoder spaces: (score query, operator, depth -> [(layer, ratio of the visual tokens entering)])
DECODER_SPACES: dict[str, tuple[str, Callable, Callable[[int], list[tuple[int, float]]]]] = {
    "fastv": ("last", prune, lambda depth: [(1, 0.5)]),  # before layer 2, by layer 1's attention
    "pyramiddrop": ("last", prune, lambda depth: [(at(depth, p), 0.5) for p in (25, 50, 75)]),
    "sparsevlm_prune": ("raters", prune, sparsevlm),
    "sparsevlm": ("raters", recycle(0.3, 0.05), sparsevlm),
    "reweight": ("text", reweight(0.5), lambda depth: [(2, 1.0)]),
}
# vision spaces: (depth, tokens before the patches, the layer the model reads) -> {layer: step}
VISION_SPACES: dict[str, Callable[[int, int, int], dict[int, VisionStep]]] = {
    "tome": lambda depth, start, read: {i: tome(start, 16) for i in range(depth)},
    "evit": lambda depth, start, read: {at(depth, p): evit(start, 0.7) for p in (25, 50, 75)},
    "visionzip": lambda depth, start, read: {depth + read: visionzip(start, 54 / 576, 10)},
}
FILES = {"sparsevlm": "sparsevlm", "sparsevlm_prune": "sparsevlm"}
# where each space's sites sit in their layers (`at:`; the others at the layer's output)
AT = {"pyramiddrop": "before", "tome": "mid", "evit": "mid"}
PAIRS = [*((name, space) for name in ("embedded", LLAVA, QWEN) for space in DECODER_SPACES),
         *((name, space) for name in ("embedded", CLIP, SIGLIP, VIT, LLAVA) for space in VISION_SPACES),
         ("embedded", "pool2x2"), (LLAVA, "pool2x2")]


def read_layer(name: str) -> int:
    """The vision layer the model reads (VisionZip's site): the model's own `vision_feature_layer`
    (LLaVA-1.5 style: -2), else the last."""
    return getattr(getattr(loaded(name).model, "config", None), "vision_feature_layer", -1)


def space_of(name: str, space: str) -> ir.Space:
    """The bundled space; VisionZip at the layer the model reads (its published site)."""
    bundled_space = bundled(f"{FILES.get(space, space)}.deos", space)
    if space != "visionzip" or read_layer(name) == -1:
        return bundled_space
    shifted = bundled_space.model_copy(deep=True)
    shifted.sites[0].selectors[0].index.items[0].at.value = read_layer(name)
    return shifted


# ---- the reference of each pair -----------------------------------------------------------
def recording(sites: dict[int, Callable], streams: dict[int, Tensor]) -> dict[int, Callable]:
    """`sites` (layer -> reduce or step), each recording the stream it leaves in `streams[layer]`."""
    def record(layer: int, site: Callable) -> Callable:
        def run(*args: Tensor) -> tuple[Tensor, ...]:
            result = site(*args)
            streams[layer] = result[0]
            return result
        return run
    return {layer: record(layer, site) for layer, site in sites.items()}


def decoder_sites(space: str, depth: int, start: int, n_visual: int,
                  streams: dict[int, Tensor]) -> dict[int, LayerReduce]:
    query, operator, sites = DECODER_SPACES[space]
    span, ratios = VisualSpan(start, n_visual), defaultdict(list)
    for layer, ratio in sites(depth):
        ratios[layer].append(ratio)
    return recording({layer: span.sites(query, operator, *r) for layer, r in ratios.items()}, streams)


def vision_steps(space: str, depth: int, start: int, streams: dict[int, Tensor], read: int = -1) -> dict[int, VisionStep]:
    return recording(VISION_SPACES[space](depth, start, read) if space in VISION_SPACES else {}, streams)


@contextmanager
def patched_forward(module: nn.Module, forward: Callable) -> Iterator[None]:
    module.forward = forward
    try:
        yield
    finally:
        del module.forward


def embedded_reference(space: str, streams: dict[int, Tensor]) -> list[Tensor]:
    model = loaded("embedded").model
    pixels, question = loaded("embedded").args
    if space in DECODER_SPACES:
        with embedded_decoder(model.decoder.layers, decoder_sites(space, len(model.decoder.layers), 0, 144, streams),
                              AT.get(space, "after")):
            return [model(pixels, question)]
    if space == "pool2x2":
        return [pooled_reference(model, pixels, question)]
    out, positions = embedded_vision(model.vision, pixels, vision_steps(space, len(model.vision.layers), 1, streams),
                                     AT.get(space, "after"))
    return [answer_from_patches(model, out, question, positions)]


def llava_reference(space: str, streams: dict[int, Tensor]) -> list[Tensor]:
    """LLaVA with its decoder, vision tower or projector reduced; the prompt a processor writes for
    as many image tokens as the reduced tower and projector give."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    model = loaded(LLAVA)
    llava, inputs = model.model, model.kwargs
    if space in DECODER_SPACES:
        lm = llava.model.language_model
        sites = decoder_sites(space, len(lm.layers), *HF_VISUAL, streams)
        run = lambda inputs_embeds, **_: BaseModelOutputWithPast(  # noqa: E731
            llama_decoder_reference(lm, inputs_embeds, sites, AT.get(space, "after")))
        with patched_forward(lm, run):
            return tensors(llava(**inputs))
    tower, projector = llava.model.vision_tower.encoder.layers, llava.model.multi_modal_projector
    features: list[int] = []
    hooks = [projector.register_forward_hook(lambda _, __, out: pool_2x2(out))] if space == "pool2x2" else []
    hooks.append(projector.register_forward_hook(lambda _, __, out: features.append(out.shape[1])))
    steps = vision_steps(space, len(tower), CLS[LLAVA], streams, read_layer(LLAVA))
    try:
        with patched_encoder(tower, llava.config.vision_config.num_attention_heads, steps, AT.get(space, "after")):
            # one pass of the reduced tower and projector counts the image tokens the prompt needs
            llava.model.get_image_features(pixel_values=inputs["pixel_values"],
                                           vision_feature_layer=llava.config.vision_feature_layer,
                                           vision_feature_select_strategy=llava.config.vision_feature_select_strategy)
            return tensors(llava(input_ids=with_placeholders(llava, inputs["input_ids"], features[0]),
                                 pixel_values=inputs["pixel_values"]))
    finally:
        for hook in hooks:
            hook.remove()


def reference(name: str, space: str, streams: dict[int, Tensor]) -> list[Tensor]:
    """The output of `name` with `space`'s reduction written by hand; each site layer's reduced
    stream in `streams[layer]`."""
    model = loaded(name)
    if name == "embedded":
        return embedded_reference(space, streams)
    if name == LLAVA:
        return llava_reference(space, streams)
    if name == QWEN:
        sites = decoder_sites(space, len(model.model.layers), *HF_VISUAL, streams)
        return [llama_decoder_reference(model.model, model.kwargs["inputs_embeds"], sites, AT.get(space, "after"))]
    (path,) = STACKS[name]
    layers = model.model.get_submodule(path)
    steps = vision_steps(space, len(layers), CLS[name], streams)
    with patched_encoder(layers, model.model.config.num_attention_heads, steps, AT.get(space, "after")):
        return tensors(model.model(**model.kwargs))


@contextmanager
def site_streams(emitted: Emitted, streams: dict[int, Tensor]) -> Iterator[None]:
    """While inside, the emitted sites record the stream they leave by layer (the last site of a
    layer last; a projector site has no layer)."""
    def record(site: nn.Module, _: tuple, out: tuple[Tensor, ...]) -> None:
        layer = re.search(r"\.(\d+)@\d+$", site.plan.name)
        if layer:
            streams[int(layer.group(1))] = out[0]

    sites = [m for name, m in emitted.graph_module.named_children() if name.startswith("deos_hard_")]
    hooks = [site.register_forward_hook(record) for site in sites]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


# ---- (c): the token counts of the emitted graph's blocks ------------------------------------
def assert_blocks_run_reduced(emitted: Emitted, stacks: dict[str, int]) -> None:
    """Every 3-D tensor of every block of `stacks` in the emitted graph (the model's own nodes and
    the inserted scores; not the sites' outputs, nor the side tensors gathered site after site)
    has the stack's dense length less the tokens the active sites before it removed (a site
    between a block's attention and its MLP: its MLP runs on fewer tokens than its attention);
    every active site removes tokens unless it keeps them all."""
    gm = emitted.graph_module
    nodes = list(gm.graph.nodes)
    removed: dict[int, int] = {}  # graph position of each site call -> tokens it removes
    for i, node in enumerate(nodes):
        if node.op == "call_module" and str(node.target).startswith("deos_hard_"):
            plan = gm.get_submodule(node.target).plan
            n_in, n_out = emitted.lengths[plan.name]
            assert n_out < n_in or plan.keep == plan.entering, plan.name
            removed[i] = n_in - n_out
    skipped = {user for i in removed for user in nodes[i].users}
    skipped |= {node for node in nodes if node.target in (gather_tokens, gather_side, gather_mask)}
    blocks = re.compile("|".join(rf"{re.escape(stack)}\.\d+" for stack in stacks))
    for i, node in enumerate(nodes):
        val = node.meta.get("val")
        block = next((p for p in module_paths(node) if blocks.fullmatch(p)), None)
        if block and node not in skipped and isinstance(val, Tensor) and val.ndim == 3:
            dense = stacks[block.rsplit(".", 1)[0]]
            assert int(val.shape[1]) == dense - sum(r for j, r in removed.items() if j < i), (block, node.name)


# ---- the matrix ---------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "space"), PAIRS, ids=[f"{name.removeprefix('hf:')}-{space}" for name, space in PAIRS])
def test_emitted_corner_equals_reference_and_shrinks(name: str, space: str):
    emitted = compile_emitted(space_of(name, space), loaded(name))
    stack = "decoder" if space in DECODER_SPACES else "vision" if space in VISION_SPACES else "projector"
    assert emitted.traced.tracer == ROUTES.get(name, ROUTES.get((name, stack)))
    assert emitted.plans and all(plan.active for plan in emitted.plans.values())
    got_streams: dict[int, Tensor] = {}
    want_streams: dict[int, Tensor] = {}
    with torch.no_grad():
        with site_streams(emitted, got_streams):
            got = tensors(emitted.run())
        want = reference(name, space, want_streams)
    assert [t.shape for t in got] == [t.shape for t in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # and the stream each site layer leaves: a site whose effect the rest of the model normalises
    # away shows there (`reweight` after layer 2 of the tiny pre-norm decoders: only normalised
    # copies of its rescaled tokens reach the output). Streams reach |x| ~ 50, where float32
    # rounds at ~4e-6: a relative tolerance of 1e-6 on top
    assert got_streams.keys() == want_streams.keys()
    for layer, stream in got_streams.items():
        torch.testing.assert_close(stream, want_streams[layer], atol=1e-5, rtol=1e-6)
    assert_blocks_run_reduced(emitted, STACKS[name])
    assert not any(isinstance(module, StackGraph) for module in loaded(name).model.modules())  # the model is intact


def test_a_site_on_a_layer_the_model_does_not_read_is_refused():
    """VisionZip on the tower's last layer of a LLaVA-1.5-style model (its projector reads layer -2)
    would change nothing: refused at the selector, with the layer to write instead."""
    with pytest.raises(SpaceError) as caught:
        compile_emitted(bundled("visionzip.deos", "visionzip"), loaded(LLAVA))
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.message.startswith("`vision.layers` layer 2 is block `model.vision_tower.encoder.layers.2`, "
                                         "whose output the model's result does not depend on")
    assert "`[-2]` on LLaVA-1.5" in diagnostic.hint
    # at the layer it reads (`[-2]`, the conformance pair above): CLS, 2 dominant of the 16
    # patches (9.375%, rounded up) and 10 contextual tokens
    assert list(compile_emitted(space_of(LLAVA, "visionzip"), loaded(LLAVA)).lengths.values()) == [(17, 13)]
