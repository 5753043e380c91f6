"""A tiny HF LLaVA saved to disk with its processor, built here (nothing downloaded): what a
user's checkpoint directory looks like, for the "any model, any data" tests.

The tokenizer is a `tokenizers` word-level model over the shapes-VQA words (so the exported
benchmark tokenizes word for word), the image processor CLIP's (PIL backend, no torchvision),
with a LLaVA-1.5-style chat template; the model: a 2-layer CLIP tower of 32x32 images in 8x8
patches (16 image tokens), a 2-layer MLP projector and a 3-layer Llama decoder, random weights.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

from deos_dsl.compiler.models import resolve_model
from deos_dsl.data import ChatEncoder, read_jsonl
from deos_dsl.embedded.vqa import ANSWERS, QUESTION_WORDS

SPECIAL = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}ASSISTANT:"
            "{% else %} {{ m['content'][0]['text'] }}{% endif %}{% endfor %}")


def save_tiny_llava(directory: Path, seed: int = 0) -> Path:
    """Build the tiny LLaVA and its processor and `save_pretrained` both into `directory`."""
    words = list(dict.fromkeys([*SPECIAL, "USER:", "ASSISTANT:", *QUESTION_WORDS[1:], *ANSWERS, "Describe", "image."]))
    vocab = {word: index for index, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                           bos_token="<s>", eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    images = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = tf.LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                                  vision_feature_select_strategy="default", chat_template=TEMPLATE, image_token="<image>",
                                  num_additional_image_tokens=1)
    vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 image_size=32, patch_size=8)
    text = tf.LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    config = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab["<image>"],
                            vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=16)
    torch.manual_seed(seed)
    tf.LlavaForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def sharpen_and_self_label(directory: Path, data: Path, scale: float = 30.0) -> None:
    """Give the random model confident answers (its output layer scaled by `scale`) and write
    them as the answers of the JSONL `data` (each example's most likely shapes-VQA answer word):
    the dense model then scores 100% and a reduction that loses information costs loss, which
    is what a search on a random model can show. Any checkpoint deos loads (LLaVA, Qwen2-VL)."""
    model = tf.AutoModelForImageTextToText.from_pretrained(directory)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    model.save_pretrained(directory)
    loaded = resolve_model(str(directory))
    examples = [replace(example, answer=None) for example in read_jsonl(data)]
    batch = ChatEncoder(loaded.processor, examples, prelude=loaded.prelude).batch(list(range(len(examples))))
    answer_ids = torch.tensor([loaded.processor.tokenizer.convert_tokens_to_ids(answer) for answer in ANSWERS])
    with torch.no_grad():
        output = loaded.model(**batch.kwargs)  # a split model's language head returns the logits themselves
    logits = output if isinstance(output, torch.Tensor) else output.logits
    chosen = logits[batch.positions][:, answer_ids].argmax(-1)
    lines = [json.loads(line) for line in data.read_text().splitlines()]
    data.write_text("".join(json.dumps({**line, "answer": ANSWERS[k]}) + "\n" for line, k in zip(lines, chosen.tolist())))
