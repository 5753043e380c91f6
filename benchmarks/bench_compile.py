"""Compile-time benchmark: trace a LLaVA-1.5-7B-shaped model on the meta device (no weights),
build its block map and bind the `fastv` space. Target (DESIGN section 5): < 60 s on 2 cores.

    .venv/bin/python benchmarks/bench_compile.py [--language-model-only]

Shapes: CLIP ViT-L/14-336 tower (24 layers, hidden 1024, 16 heads, 576 patches + CLS), Llama-7B
decoder (32 layers, hidden 4096, 32 heads, MLP 11008), 576 image tokens in a 640-token prompt.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deos_dsl.compiler import TracedModel, build_block_map, trace, trace_language_model  # noqa: E402
from deos_dsl.compiler.tiny_models import llava_config  # noqa: E402
from deos_dsl.frontend import load_spaces  # noqa: E402
from deos_dsl.passes.bind_sites import bind_sites  # noqa: E402

VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              image_size=336, patch_size=14)
TEXT = dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, use_cache=False)
VISUAL, PROMPT, START = 576, 640, 5
FASTV = Path(__file__).resolve().parents[1] / "spaces" / "fastv.deos"


def build() -> torch.nn.Module:
    import transformers as tf

    with torch.device("meta"):
        return tf.LlavaForConditionalGeneration(llava_config(VISION, TEXT)).eval().requires_grad_(False)


def trace_prompt(model: torch.nn.Module) -> TracedModel:
    """Trace the whole model on a batch-1 prompt of `PROMPT` tokens, `VISUAL` image placeholders at `START`."""
    ids = torch.ones(1, PROMPT, dtype=torch.long, device="meta")
    pixels = torch.zeros(1, 3, 336, 336, device="meta")
    ids[:, START:START + VISUAL] = model.config.image_token_index
    return trace(model, (), dict(input_ids=ids, pixel_values=pixels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--language-model-only", action="store_true", help="trace the decoder on inputs_embeds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = build()
    t1 = time.perf_counter()
    if args.language_model_only:
        traced = trace_language_model(model, PROMPT)
    else:
        traced = trace_prompt(model)
    t2 = time.perf_counter()
    block_map = build_block_map(traced, spans={"decoder": (START, START + VISUAL)})
    t3 = time.perf_counter()
    sites = bind_sites(load_spaces(FASTV)[0], block_map)
    t4 = time.perf_counter()
    print(f"tracer: {traced.tracer}; dynamic dims: {traced.dynamic_dims or 'none'}")
    print("stacks: " + ", ".join(f"{s.prefix} ({s.role}, {len(s.blocks)} blocks, stream "
                                f"[{', '.join(s.blocks[0].shape)}])" for s in block_map.stacks)
          + f"; projector: {block_map.projector.path if block_map.projector else 'none'}")
    print(f"fastv binds: {[s.name for s in sites]}")
    print(f"build {t1 - t0:.1f} s, trace {t2 - t1:.1f} s, block map {t3 - t2:.1f} s, bind {t4 - t3:.2f} s; "
          f"total {t4 - t0:.1f} s (target < 60 s)")


if __name__ == "__main__":
    main()
