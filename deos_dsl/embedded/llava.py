"""The realistic embedded default: an HF `LlavaForConditionalGeneration` that answers shapes-VQA
questions by generating the answer word, shipped as a `save_pretrained` folder with its
processor (`loading.LLAVA_DIRECTORY`: `deos_dsl/embedded/llava/`), loaded like any checkpoint (`from_pretrained(path)`;
in deos `--model embedded:llava`).

- vision tower: CLIP, 96x96 images in 8x8 patches (144 patch tokens and a CLS token), width 128,
  4 layers; the decoder reads its LAST layer's patch tokens (no dead layer);
- projector: LLaVA's two-layer MLP (GELU), 128 -> 192;
- language model: Qwen2, width 192, 8 layers, 4 query and 2 key-value heads (grouped-query
  attention), RoPE, a word-level vocabulary (`VOCABULARY`);
- processor: a `tokenizers` WordLevel tokenizer over the benchmark's words, CLIP's image
  processor (PIL backend, no torchvision; pixels scaled to [-1, 1]), a LLaVA-1.5 chat template:
  `USER: <image> {question} ASSISTANT:`, then the model generates ` {answer} </s>`.
`training_inputs` builds exactly the ids the processor and the template give (a test checks).
"""

from __future__ import annotations

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import Tensor

from .vqa import ANSWERS, IMAGE_SIZE, PAD, QUESTION_WORDS

IMAGE = "<image>"
SPECIAL = (PAD, "<unk>", "<s>", "</s>", IMAGE)
ROLES = ("USER:", "ASSISTANT:")
VOCABULARY = tuple(dict.fromkeys((*SPECIAL, *ROLES, *QUESTION_WORDS, *ANSWERS)))
TOKEN = {word: index for index, word in enumerate(VOCABULARY)}
PATCH = 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2
PIXEL_MEAN = PIXEL_STD = 0.5
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}ASSISTANT:"
            "{% else %} {{ m['content'][0]['text'] }}{% endif %}{% endfor %}")


def build_processor() -> tf.LlavaProcessor:
    """The tokenizer, image processor and chat template (module docstring)."""
    backend = Tokenizer(models.WordLevel(dict(TOKEN), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, unk_token="<unk>", bos_token="<s>",
                                           eos_token="</s>", extra_special_tokens={"image_token": IMAGE})
    images = tf.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                   image_mean=[PIXEL_MEAN] * 3, image_std=[PIXEL_STD] * 3)
    return tf.LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=PATCH,
                             vision_feature_select_strategy="default", chat_template=TEMPLATE, image_token=IMAGE,
                             num_additional_image_tokens=1)


def build_config() -> tf.LlavaConfig:
    vision = tf.CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                                 image_size=IMAGE_SIZE, patch_size=PATCH)
    text = tf.Qwen2Config(vocab_size=len(VOCABULARY), hidden_size=192, intermediate_size=576, num_hidden_layers=8,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          pad_token_id=TOKEN[PAD], bos_token_id=TOKEN["<s>"], eos_token_id=TOKEN["</s>"],
                          tie_word_embeddings=False)
    return tf.LlavaConfig(vision_config=vision, text_config=text, image_token_index=TOKEN[IMAGE],
                          vision_feature_layer=-1, vision_feature_select_strategy="default",
                          image_seq_length=IMAGE_TOKENS, projector_hidden_act="gelu")


def build_model(seed: int) -> tf.LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    return tf.LlavaForConditionalGeneration(build_config())


def pixel_values(pixels: Tensor) -> Tensor:
    """The processor's pixel values of rendered images `[B, 3, 96, 96]` in [0, 1]."""
    return (pixels - PIXEL_MEAN) / PIXEL_STD


def training_inputs(questions: list[tuple[str, ...]], answers: list[str] | None) -> tuple[Tensor, Tensor, Tensor]:
    """`(input_ids [B, L], attention_mask [B, L], answer_position [B])` of the templated
    questions (then each answer word and `</s>`, the end of the model's turn), right-padded;
    `answer_position[b]` is the row whose logits predict the answer word (the last prompt token;
    the next row predicts `</s>`)."""
    rows = []
    for index, words in enumerate(questions):
        ids = [TOKEN["USER:"], *[TOKEN[IMAGE]] * IMAGE_TOKENS, *(TOKEN[w] for w in words), TOKEN["ASSISTANT:"]]
        rows.append(ids + ([TOKEN[answers[index]], TOKEN["</s>"]] if answers is not None else []))
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), TOKEN[PAD], dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), 1
    prompt = torch.tensor([len(row) - 2 * (answers is not None) for row in rows])
    return ids, mask, prompt - 1
