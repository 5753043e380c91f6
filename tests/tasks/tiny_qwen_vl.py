"""Tiny HF Qwen2-VL and Qwen2.5-VL checkpoints saved to disk with their tokenizer and image
processor, built here (nothing downloaded): what a user's Qwen2-VL directory looks like.

The tokenizer is a `tokenizers` word-level model over the shapes-VQA words plus Qwen's chat and
vision tokens (`<|vision_start|> <|image_pad|> <|vision_end|>`), with a Qwen-style chat
template; the image processor is Qwen2-VL's (PIL backend: 8x8 patches, merged 2x2, at most
64x64 pixels, so a 96x96 image becomes an 8x8 grid and 16 image tokens). `AutoProcessor` cannot
build these directories' processor here (its video processor needs torchvision), so deos loads
the tokenizer and the image processor alone and expands the placeholder by the grid. Models:
the conformance models' tiny sizes (`tiny_models.QWEN_VISIONS`: a 2-block vision tower;
Qwen2.5-VL: 4 blocks, windowed attention except in blocks 1 and 3), a 2x2 merger and a 3-layer
decoder with M-RoPE, random weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

from deos_dsl.compiler.tiny_models import QWEN_TEXT, QWEN_VISIONS
from deos_dsl.embedded.vqa import ANSWERS, QUESTION_WORDS

IMAGE = "<|image_pad|>"
SPECIAL = ("<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", IMAGE, "<|vision_end|>")
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}<|vision_start|> <|image_pad|> <|vision_end|> {% else %}{{ c['text'] }} "
            "{% endif %}{% endfor %}<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant{% endif %}")
FAMILIES = ("qwen2_vl", "qwen2_5_vl")


def _config(family: str, vocab: dict[str, int]) -> tuple[type, object]:
    """The model class and config of `family`: the conformance models' tiny sizes
    (`tiny_models.QWEN_VISIONS`, `QWEN_TEXT`) over this tokenizer's vocabulary."""
    text = dict(QWEN_TEXT, vocab_size=len(vocab), pad_token_id=0, bos_token_id=None, eos_token_id=vocab["<|im_end|>"])
    settings = dict(image_token_id=vocab[IMAGE], vision_start_token_id=vocab["<|vision_start|>"],
                    vision_end_token_id=vocab["<|vision_end|>"], vision_config=QWEN_VISIONS[family], text_config=text)
    if family == "qwen2_vl":
        return tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLConfig(**settings)
    return tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLConfig(**settings)


def save_tiny_qwen_vl(directory: Path, family: str = "qwen2_vl", seed: int = 0) -> Path:
    """Build the tiny `family` model (`FAMILIES`) and its processor; `save_pretrained` both into `directory`."""
    words = list(dict.fromkeys([*SPECIAL, "user", "assistant", *QUESTION_WORDS[1:], *ANSWERS, "Describe", "image."]))
    vocab = {word: index for index, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                           eos_token="<|im_end|>", extra_special_tokens={"image_token": IMAGE})
    tokenizer.chat_template = TEMPLATE
    images = tf.Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16,
                                         max_pixels=64 * 64)
    model_class, config = _config(family, vocab)
    torch.manual_seed(seed)
    model_class(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    images.save_pretrained(directory)
    return directory
