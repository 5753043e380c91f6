"""Tiny random-initialised `transformers` models built in code (nothing downloaded): the
`hf:<Architecture>` names of the model registry and the architecture conformance matrix.

One row of `TINY_MODELS` per architecture: its model built from a tiny config, and example
inputs the way its processor would lay them out (image placeholders in `input_ids` as many as
the model turns one image into; flattened patches, several images per example or grid sizes
where the family takes them). A bare language model reads `inputs_embeds` whose positions
`VISUAL_SPAN` stand for the image tokens (`LoadedModel.spans`). Sizes are shared: 4 heads of
8, width 32, MLP 64; vision towers of 2 layers on 8x8 patches, decoders of 3 layers with 2
key-value heads. `transformers` is imported only when a tiny model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

Span = tuple[int, int]

# 32x32 images of 8x8 patches (16 patches) in the VLMs; vision encoders alone see 64x64 images
# (64 patches), enough for the bundled spaces' fixed counts (ToMe merges 16 tokens per layer)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   image_size=32, patch_size=8)
TINY_ENCODER = dict(TINY_VISION, image_size=64)
TINY_TEXT = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
BATCH, TEXT_LEN, IMAGE_TOKEN = 2, 24, 100
VISUAL_SPAN: Span = (2, 18)  # where the 16 image tokens sit in the tiny decoders' sequences


@dataclass(frozen=True)
class TinyModel:
    """One architecture: `build(tf)` returns the model (given the `transformers` module) and
    `inputs(model)` its example keyword inputs; `spans` overrides the block map's spans."""

    build: Callable[[Any], nn.Module]
    inputs: Callable[[nn.Module], dict[str, Any]]
    spans: dict[str, Span] = field(default_factory=dict)


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def pixels(size: int = TINY_VISION["image_size"], *leading: int) -> torch.Tensor:
    """`[BATCH, *leading, 3, size, size]` images in [0, 1)."""
    return torch.rand(BATCH, *leading, 3, size, size, generator=_generator())


def text_ids(image_tokens: int = VISUAL_SPAN[1] - VISUAL_SPAN[0], length: int = TEXT_LEN) -> torch.Tensor:
    """`[BATCH, length]` token ids with `image_tokens` image placeholders from position 2."""
    ids = torch.randint(1, IMAGE_TOKEN, (BATCH, length), generator=_generator())
    ids[:, VISUAL_SPAN[0]:VISUAL_SPAN[0] + image_tokens] = IMAGE_TOKEN
    return ids


def _embeds(_: nn.Module) -> dict[str, Any]:
    return {"inputs_embeds": torch.randn(BATCH, TEXT_LEN, TINY_TEXT["hidden_size"], generator=_generator()),
            "use_cache": False}


def _images(size: int) -> Callable[[nn.Module], dict[str, Any]]:
    return lambda _: {"pixel_values": pixels(size)}


def _prompt(image_tokens: int, length: int = TEXT_LEN, **extra: Callable[[torch.Tensor], Any]
            ) -> Callable[[nn.Module], dict[str, Any]]:
    """A VLM's inputs: ids with `image_tokens` placeholders, one 32x32 image per example, and
    `extra[name](ids)` for the family's other inputs."""
    def inputs(_: nn.Module) -> dict[str, Any]:
        ids = text_ids(image_tokens, length)
        return {"input_ids": ids, "pixel_values": pixels(), **{name: make(ids) for name, make in extra.items()}}
    return inputs


def llava_config(vision: dict[str, Any], text: dict[str, Any]) -> Any:
    """A LLaVA-1.5-style config (CLIP tower, Llama decoder, CLS dropped, features of layer -2)."""
    import transformers as tf

    return tf.LlavaConfig(vision_config=tf.CLIPVisionConfig(**vision), text_config=tf.LlamaConfig(**text),
                          image_token_index=IMAGE_TOKEN,
                          image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2,
                          vision_feature_layer=-2, vision_feature_select_strategy="default")


# use_cache=False lives in the configs, not in **kwargs: a non-tensor entry of a `**kwargs` makes
# torch 2.13's dynamic-shape export fail ("Must provide a tree_name"), forcing static shapes
TEXT = dict(TINY_TEXT, use_cache=False)
HEADS = dict(TINY_TEXT, head_dim=8)
SAME_IMAGES = lambda ids: torch.tensor([[32, 32]] * BATCH)  # noqa: E731  (image sizes of the examples)
IMAGE_TYPES = lambda ids: (ids == IMAGE_TOKEN).long()  # noqa: E731  (token types: 1 on image tokens)


def _vision(config: str, model: str, size: int = TINY_ENCODER["image_size"], pooled: bool = False,
            **settings: Any) -> TinyModel:
    """A vision encoder `model` of config `config` on `size` images (no pooling head)."""
    def build(tf: Any) -> nn.Module:
        cfg = getattr(tf, config)(**{**TINY_VISION, "image_size": size, **settings})
        return getattr(tf, model)(cfg, add_pooling_layer=False) if pooled else getattr(tf, model)(cfg)
    return TinyModel(build, _images(size))


def _decoder(config: str, model: str, **settings: Any) -> TinyModel:
    """A bare language model on `inputs_embeds`, image tokens at `VISUAL_SPAN`."""
    return TinyModel(lambda tf: getattr(tf, model)(getattr(tf, config)(**{**HEADS, **settings})), _embeds,
                     {"decoder": VISUAL_SPAN})


def _llava_next(tf: Any) -> nn.Module:
    return tf.LlavaNextForConditionalGeneration(tf.LlavaNextConfig(
        vision_config=tf.CLIPVisionConfig(**TINY_VISION), text_config=tf.LlamaConfig(**TEXT),
        image_token_index=IMAGE_TOKEN, image_grid_pinpoints=[[32, 32], [32, 64]], vision_feature_layer=-2))


def _llava_next_inputs(_: nn.Module) -> dict[str, Any]:
    # a 32x32 image: the base view and one tile of 16 patches each, a newline token per row
    return {"input_ids": text_ids(36, 48), "pixel_values": pixels(32, 2), "image_sizes": SAME_IMAGES(None)}


QWEN_COMMON = dict(patch_size=8, spatial_merge_size=2, temporal_patch_size=2, num_heads=4, hidden_size=32)
QWEN_VISIONS = {  # by model type; Qwen2.5-VL: windowed attention (16-pixel windows) in blocks 0 and 2, full in 1 and 3
    "qwen2_vl": dict(QWEN_COMMON, depth=2, embed_dim=32, mlp_ratio=2),
    "qwen2_5_vl": dict(QWEN_COMMON, depth=4, intermediate_size=64, out_hidden_size=32, window_size=16,
                       fullatt_block_indexes=[1, 3]),
}
QWEN_TEXT = dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})


def _qwen2_vl(tf: Any) -> nn.Module:
    return tf.Qwen2VLForConditionalGeneration(tf.Qwen2VLConfig(vision_config=QWEN_VISIONS["qwen2_vl"], text_config=QWEN_TEXT,
                                                               image_token_id=IMAGE_TOKEN, vision_start_token_id=101))


def _qwen2_5_vl(tf: Any) -> nn.Module:
    return tf.Qwen2_5_VLForConditionalGeneration(tf.Qwen2_5_VLConfig(
        vision_config=QWEN_VISIONS["qwen2_5_vl"], text_config=QWEN_TEXT, image_token_id=IMAGE_TOKEN,
        vision_start_token_id=101))


def _qwen2_vl_inputs(_: nn.Module) -> dict[str, Any]:
    # one 32x32 image per example: 16 flattened patches of 2 frames, merged 2x2 into 4 tokens
    ids = text_ids(4)
    patches = torch.rand(BATCH * 16, 3 * 2 * 8 * 8, generator=_generator())
    return {"input_ids": ids, "pixel_values": patches, "image_grid_thw": torch.tensor([[1, 4, 4]] * BATCH),
            "mm_token_type_ids": IMAGE_TYPES(ids)}


def _siglip2_inputs(_: nn.Module) -> dict[str, Any]:
    # 64 flattened 8x8 patches per image (an 8x8 grid), none of them padding
    return {"pixel_values": torch.rand(BATCH, 64, 3 * 8 * 8, generator=_generator()),
            "pixel_attention_mask": torch.ones(BATCH, 64, dtype=torch.long),
            "spatial_shapes": torch.tensor([[8, 8]] * BATCH)}


def _idefics(model: str, config: str, vision: str) -> TinyModel:
    """Idefics3 / SmolVLM: several images per example `[B, I, 3, H, W]`, pixel-shuffled by 2."""
    def build(tf: Any) -> nn.Module:
        return getattr(tf, model)(getattr(tf, config)(vision_config=getattr(tf, vision)(**TINY_VISION),
                                                      text_config=tf.LlamaConfig(**TEXT), image_token_id=IMAGE_TOKEN,
                                                      scale_factor=2, use_cache=False))
    return TinyModel(build, lambda _: {"input_ids": text_ids(4), "pixel_values": pixels(32, 1)})


TINY_MODELS: dict[str, TinyModel] = {
    # vision encoders
    "CLIPVisionModel": _vision("CLIPVisionConfig", "CLIPVisionModel"),
    "SiglipVisionModel": _vision("SiglipVisionConfig", "SiglipVisionModel"),
    "ViTModel": _vision("ViTConfig", "ViTModel", pooled=True),
    "DeiTModel": _vision("DeiTConfig", "DeiTModel", pooled=True),  # CLS + distillation token
    "Dinov2Model": _vision("Dinov2Config", "Dinov2Model"),
    "Dinov2WithRegistersModel": _vision("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel",
                                        num_register_tokens=4),
    "DINOv3ViTModel": _vision("DINOv3ViTConfig", "DINOv3ViTModel", num_register_tokens=4),  # RoPE on patches
    "BeitModel": _vision("BeitConfig", "BeitModel", pooled=True, use_relative_position_bias=True),
    "Data2VecVisionModel": _vision("Data2VecVisionConfig", "Data2VecVisionModel", pooled=True),
    "IJepaModel": _vision("IJepaConfig", "IJepaModel", pooled=True),
    "ViTMSNModel": _vision("ViTMSNConfig", "ViTMSNModel"),
    "ViTMAEModel": _vision("ViTMAEConfig", "ViTMAEModel"),  # random patch masking
    "Aimv2VisionModel": _vision("Aimv2VisionConfig", "Aimv2VisionModel"),
    "MLCDVisionModel": _vision("MLCDVisionConfig", "MLCDVisionModel"),
    "Siglip2VisionModel": TinyModel(
        lambda tf: tf.Siglip2VisionModel(tf.Siglip2VisionConfig(**{**TINY_VISION, "num_patches": 64})),
        _siglip2_inputs),
    "SwinModel": TinyModel(lambda tf: tf.SwinModel(tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16,
                                                                 depths=[1, 1], num_heads=[2, 2], window_size=4)),
                           _images(32)),
    # language models (the decoder of a VLM, fed image embeddings)
    "Qwen2Model": TinyModel(lambda tf: tf.Qwen2Model(tf.Qwen2Config(**TINY_TEXT)), _embeds, {"decoder": VISUAL_SPAN}),
    "LlamaModel": _decoder("LlamaConfig", "LlamaModel"),
    "MistralModel": _decoder("MistralConfig", "MistralModel"),
    "GemmaModel": _decoder("GemmaConfig", "GemmaModel"),
    "Gemma2Model": _decoder("Gemma2Config", "Gemma2Model"),  # attention logits soft-capped
    "Qwen3Model": _decoder("Qwen3Config", "Qwen3Model"),
    # vision-language models
    "LlavaForConditionalGeneration": TinyModel(
        lambda tf: tf.LlavaForConditionalGeneration(llava_config(dict(TINY_VISION, num_hidden_layers=3), TEXT)),
        _prompt(16)),
    "VipLlavaForConditionalGeneration": TinyModel(
        lambda tf: tf.VipLlavaForConditionalGeneration(tf.VipLlavaConfig(
            vision_config=tf.CLIPVisionConfig(**dict(TINY_VISION, num_hidden_layers=3)),
            text_config=tf.LlamaConfig(**TEXT), image_token_index=IMAGE_TOKEN, vision_feature_layers=[-2, -1])),
        _prompt(16)),
    "LlavaNextForConditionalGeneration": TinyModel(_llava_next, _llava_next_inputs),
    "PaliGemmaForConditionalGeneration": TinyModel(  # text attends bidirectionally over its image prefix
        lambda tf: tf.PaliGemmaForConditionalGeneration(tf.PaliGemmaConfig(
            vision_config=tf.SiglipVisionConfig(**TINY_VISION), text_config=tf.GemmaConfig(**HEADS, use_cache=False),
            image_token_index=IMAGE_TOKEN, projection_dim=32)),
        _prompt(16, token_type_ids=IMAGE_TYPES)),
    "Gemma3ForConditionalGeneration": TinyModel(
        lambda tf: tf.Gemma3ForConditionalGeneration(tf.Gemma3Config(
            vision_config=tf.SiglipVisionConfig(**TINY_VISION), text_config=tf.Gemma3TextConfig(**HEADS, use_cache=False),
            image_token_index=IMAGE_TOKEN, mm_tokens_per_image=4)),
        _prompt(4, token_type_ids=IMAGE_TYPES)),
    "Mistral3ForConditionalGeneration": TinyModel(  # Pixtral tower, patches merged 2x2
        lambda tf: tf.Mistral3ForConditionalGeneration(tf.Mistral3Config(
            vision_config=tf.PixtralVisionConfig(**TINY_VISION, head_dim=8),
            text_config=tf.MistralConfig(**HEADS, use_cache=False), image_token_index=IMAGE_TOKEN,
            spatial_merge_size=2)),
        _prompt(4, image_sizes=SAME_IMAGES)),
    "AyaVisionForConditionalGeneration": TinyModel(  # pixel shuffle by 2 before the projector
        lambda tf: tf.AyaVisionForConditionalGeneration(tf.AyaVisionConfig(
            vision_config=tf.SiglipVisionConfig(**TINY_VISION), text_config=tf.Cohere2Config(**HEADS, use_cache=False),
            image_token_index=IMAGE_TOKEN, downsample_factor=2)),
        _prompt(4)),
    "InternVLForConditionalGeneration": TinyModel(
        lambda tf: tf.InternVLForConditionalGeneration(tf.InternVLConfig(
            vision_config=tf.InternVLVisionConfig(**{**TINY_VISION, "image_size": [32, 32], "patch_size": [8, 8]}),
            text_config=tf.Qwen2Config(**TEXT), image_token_id=IMAGE_TOKEN, downsample_ratio=0.5)),
        _prompt(4)),
    "Idefics3ForConditionalGeneration": _idefics("Idefics3ForConditionalGeneration", "Idefics3Config",
                                                 "Idefics3VisionConfig"),
    "SmolVLMForConditionalGeneration": _idefics("SmolVLMForConditionalGeneration", "SmolVLMConfig",
                                                "SmolVLMVisionConfig"),
    "Blip2ForConditionalGeneration": TinyModel(  # a Q-former turns the patches into 4 query tokens
        lambda tf: tf.Blip2ForConditionalGeneration(tf.Blip2Config(
            vision_config=TINY_VISION,
            qformer_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                encoder_hidden_size=32, vocab_size=128),
            text_config=dict(model_type="opt", vocab_size=128, hidden_size=32, ffn_dim=64, num_hidden_layers=3,
                             num_attention_heads=4, word_embed_proj_dim=32, use_cache=False),
            num_query_tokens=4, image_token_index=IMAGE_TOKEN)),
        _prompt(4)),
    # split at the language model (`prelude.py`): the vision tower runs eagerly before the traced graph
    "Qwen2VLForConditionalGeneration": TinyModel(_qwen2_vl, _qwen2_vl_inputs),
    "Qwen2_5_VLForConditionalGeneration": TinyModel(_qwen2_5_vl, _qwen2_vl_inputs),
}
