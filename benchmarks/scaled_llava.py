"""Write a LLaVA-1.5-shaped checkpoint with RANDOM weights, for speed measurements only.

The shipped model (`embedded:llava`, 3.5 M parameters, 144 image tokens) runs a prefill in a few
milliseconds on a GPU whatever it computes: every figure there is kernel-launch overhead, and a
token reducer can only add launches. Speed on a GPU is a question about models of the size people
deploy, so this writes one of LLaVA-1.5's geometry (336-pixel images in 14-pixel patches: 576
image tokens, a CLIP-L-shaped tower, a decoder of `--geometry`'s width and depth) with the shipped
model's processor and vocabulary, as a `save_pretrained` folder that every benchmark's `--model DIR`
loads. Its answers are noise: accuracy is never read from it.

    python benchmarks/scaled_llava.py --out runs/scaled --geometry 1.5b [--device cuda]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers as tf

from deos_dsl.embedded.llava import build_config, build_processor

# name: (image size, patch, vision width, vision layers, vision heads, width, layers, heads, kv heads, ffn)
GEOMETRIES = {
    "1.5b": (336, 14, 1024, 24, 16, 2048, 24, 16, 16, 5632),  # CLIP-L tower, a 1.2 B decoder
    "smoke": (336, 14, 64, 2, 2, 64, 4, 2, 1, 128),  # the same token counts, tiny: checks the script
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), default="1.5b")
    parser.add_argument("--device", default="cpu", help="where the random weights are drawn (cuda: seconds)")
    args = parser.parse_args()
    image, patch, v_width, v_layers, v_heads, width, layers, heads, kv_heads, ffn = GEOMETRIES[args.geometry]
    config = build_config()
    config.vision_config.update(dict(image_size=image, patch_size=patch, hidden_size=v_width, num_hidden_layers=v_layers,
                                     num_attention_heads=v_heads, intermediate_size=4 * v_width))
    config.text_config.update(dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=kv_heads, intermediate_size=ffn, max_position_embeddings=2048,
                                   layer_types=["full_attention"] * layers))
    config.image_seq_length = (image // patch) ** 2
    processor = build_processor()
    processor.patch_size = patch
    processor.image_processor.size = {"shortest_edge": image}
    processor.image_processor.crop_size = {"height": image, "width": image}
    torch.manual_seed(0)
    with torch.device(args.device):
        model = tf.LlavaForConditionalGeneration(config)
    model.to("cpu").save_pretrained(args.out)
    processor.save_pretrained(args.out)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {count / 1e9:.2f} B parameters, {config.image_seq_length} image tokens (random weights)")


if __name__ == "__main__":
    main()
