"""Accuracy of the shipped HF LLaVA on shapes-VQA, dense and with fewer visual tokens.

The answer is the argmax next token after the templated question (`llava.training_inputs`):
the word the model would generate first. With a `keep` rule a subset of the 144 projected
image features is written over as many image placeholders (the others are removed from the
sequence): `random` (a random subset per example, its order kept) or `cls` (the patches the
vision tower's CLS token attends to most in its last layer, as EViT and VisionZip rank them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import transformers as tf
from torch import Tensor

from . import vqa
from .evaluate import accuracy_per_family, random_keep_index
from .llava import IMAGE, IMAGE_TOKENS, TOKEN, pixel_values, training_inputs


def cls_attention(model: tf.LlavaForConditionalGeneration, pixels: Tensor) -> Tensor:
    """`[B, 144]`: the attention the CLS query pays each patch in the tower's last layer,
    averaged over heads (recomputed from that layer's own q and k)."""
    tower = model.model.vision_tower
    layers = tower.vision_model.encoder.layers if hasattr(tower, "vision_model") else tower.encoder.layers
    layer = layers[-1]
    x = layer.layer_norm1(tower(pixel_values=pixel_values(pixels), output_hidden_states=True).hidden_states[-2])
    attn = layer.self_attn
    b, n, _ = x.shape
    q = attn.q_proj(x[:, :1]).view(b, 1, attn.num_heads, -1).transpose(1, 2)
    k = attn.k_proj(x).view(b, n, attn.num_heads, -1).transpose(1, 2)
    weights = F.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)  # [B, H, 1, N]
    return weights.mean(dim=1)[:, 0, 1:]


def keep_index(rule: str, model: tf.LlavaForConditionalGeneration, pixels: Tensor, ratio: float,
               generator: torch.Generator) -> Tensor:
    """`[B, K]` sorted patch indices kept by `rule` (`random` or `cls`), `K = ceil(ratio * 144)`."""
    if rule == "random":
        return random_keep_index(pixels.shape[0], IMAGE_TOKENS, ratio, generator)
    k = math.ceil(ratio * IMAGE_TOKENS)
    return cls_attention(model, pixels).topk(k, dim=1).indices.sort(dim=1).values


@torch.no_grad()
def answers(model: tf.LlavaForConditionalGeneration, batch: vqa.Batch, keep: str | None = None, ratio: float = 1.0,
            seed: int = 0, chunk: int = 100) -> Tensor:
    """Predicted answer ids (into `vqa.ANSWERS`; -1 for a word that is no answer) `[B]`."""
    generator = torch.Generator().manual_seed(seed)
    vocab_to_answer = torch.full((len(TOKEN),), -1, dtype=torch.long)
    for index, word in enumerate(vqa.ANSWERS):
        vocab_to_answer[TOKEN[word]] = index
    predictions = []
    for lo in range(0, len(batch.answer), chunk):
        pixels = batch.pixels[lo:lo + chunk]
        questions = [tuple(vqa.QUESTION_WORDS[i] for i in row if vqa.QUESTION_WORDS[i] != vqa.PAD)
                     for row in batch.question[lo:lo + chunk].tolist()]
        ids, mask, last = training_inputs(questions, None)
        if keep is None:
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values(pixels)).logits
        else:
            index = keep_index(keep, model, pixels, ratio, generator)
            logits = _reduced_logits(model, ids, mask, pixels, index)
            last = last - (IMAGE_TOKENS - index.shape[1])
        predictions.append(vocab_to_answer[logits[torch.arange(len(questions)), last].argmax(-1)])
    return torch.cat(predictions)


def _reduced_logits(model: tf.LlavaForConditionalGeneration, ids: Tensor, mask: Tensor, pixels: Tensor,
                    index: Tensor) -> Tensor:
    """Logits with only the `index` image features, written over as many placeholders."""
    surplus = IMAGE_TOKENS - index.shape[1]
    image = ids == TOKEN[IMAGE]
    drop = image & (image.cumsum(dim=1) > index.shape[1])
    order = torch.argsort(drop.to(torch.int32), dim=1, stable=True)[:, :ids.shape[1] - surplus]
    ids, mask = ids.gather(1, order), mask.gather(1, order)
    return model(inputs_embeds=kept_image_embeds(model, ids, pixel_values(pixels), index), attention_mask=mask).logits


def kept_image_embeds(model: tf.LlavaForConditionalGeneration, ids: Tensor, pixels: Tensor, index: Tensor) -> Tensor:
    """`[B, L, D]`: the embeddings of `ids [B, L]`, whose `K` image placeholders per row take the
    projected features of the patches `index [B, K]` (in that order) of the processed `pixels`."""
    features = model.model.get_image_features(pixel_values=pixels)
    features = torch.stack(list(getattr(features, "pooler_output", features)))  # [B, 144, D]
    kept = features.gather(1, index[..., None].expand(-1, -1, features.shape[-1]))
    embeds = model.get_input_embeddings()(ids)
    slots = (ids == TOKEN[IMAGE])[..., None].expand_as(embeds)
    return embeds.masked_scatter(slots, kept.to(embeds.dtype))


def accuracy(model: tf.LlavaForConditionalGeneration, batch: vqa.Batch, keep: str | None = None, ratio: float = 1.0,
             seed: int = 0) -> dict[str, float]:
    """Accuracy (%) per family and overall (module docstring)."""
    return accuracy_per_family(answers(model, batch, keep, ratio, seed), batch)
