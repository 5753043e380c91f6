"""Memory of a search step: 7B-13B vision-language models measured on fake tensors (shapes
only, nothing allocated), and the shipped model's search measured for real.

    .venv/bin/python benchmarks/bench_search_memory.py [--tokens 640] [--steps 6] [--no-run]

1. LARGE MODELS, on fake tensors (`FakeTensorMode`: shapes and dtypes, no storage). Each model is built from its published configuration
   (`CONFIGS`: sizes only, no weights) in bfloat16, frozen. Its language model and head run one
   forward on `[1, tokens, hidden]` embeddings that require a gradient (the operator
   parameters upstream of every block do), followed by a cross-entropy on every row; the
   tensors autograd saves for the backward pass are counted with `saved_tensors_hooks`, the
   frozen weights (and views of them) excluded. Columns:
   - `weights`: every parameter (vision tower included) in bfloat16;
   - `saved / example`: what a plain step keeps until its backward; fake tensors run
     attention in its math form, which saves the `[heads, T, T]` scores: listed apart
     (`scores`) and left out of `saved`, since CUDA's flash / memory-efficient SDPA kernels save
     none (with a relaxed key bias, the memory-efficient kernel applies);
   - `--recompute / example`: one `[T, hidden]` block input per layer (what per-block
     checkpointing keeps) plus one block's saved tensors while it is recomputed;
   - `micro-batch (80 GiB)`: the largest micro-batch one 80 GiB GPU holds, plain and with
     `--recompute`, after the weights, the logits `[T, vocab]` of each example (bfloat16 and
     the float32 copy of the loss) and 10% of the device kept free for the allocator and
     CUDA's context. DDP processes (`torchrun`) each hold the whole frozen model, so the
     figure is per GPU whatever their number: more GPUs give a larger global batch;
   - `--shard, 8 GPUs`: each GPU's weights when the blocks' weights (`*.layers.*`: the
     decoder's and a CLIP tower's; Qwen's vision tower runs in the prelude, unsharded) are
     sharded over 8 processes (`ddp.shard`), and the micro-batch it then holds with `--recompute`.
2. THE SHIPPED MODEL (`embedded:llava`, 149 tokens, on the procedural benchmark), measured:
   `deos search` of the main job's space (`eos_25`: a projector site and one per decoder
   layer), `--steps` steps at batch 16, plain, `--recompute` and `--accumulate 4`, each in its
   own process (the peak resident set is the process's): seconds per step (from the search
   log's clock, steps 2 to N) and the peak memory the search prints. At this size the process's memory is mostly the libraries;
   the step time shows what recomputation costs (about one more forward per step).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers as tf  # noqa: E402

from deos_dsl.compiler.prelude import LanguageHead  # noqa: E402

GiB = 2**30
DEVICE_GIB = 80
FREE = 0.10  # of the device: allocator fragmentation and CUDA's context
SHARDS = 8  # processes the `--shard` column spreads the blocks' weights over
REPO = Path(__file__).resolve().parents[1]

QWEN_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14)


def _llama(hidden: int, intermediate: int, layers: int, heads: int) -> dict[str, int]:
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=heads, vocab_size=32000)


CONFIGS = {  # published sizes (the models' config.json files)
    "Qwen2-VL-7B": lambda: tf.Qwen2VLForConditionalGeneration(tf.Qwen2VLConfig(
        text_config=QWEN_TEXT, vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4,
                                                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2))),
    "Qwen2.5-VL-7B": lambda: tf.Qwen2_5_VLForConditionalGeneration(tf.Qwen2_5_VLConfig(
        text_config=QWEN_TEXT, vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                                  out_hidden_size=3584, window_size=112, patch_size=14,
                                                  spatial_merge_size=2, temporal_patch_size=2,
                                                  fullatt_block_indexes=[7, 15, 23, 31]))),
    "LLaVA-1.5-7B": lambda: tf.LlavaForConditionalGeneration(tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(**CLIP_L_336), text_config=tf.LlamaConfig(**_llama(4096, 11008, 32, 32)))),
    "LLaVA-1.5-13B": lambda: tf.LlavaForConditionalGeneration(tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(**CLIP_L_336), text_config=tf.LlamaConfig(**_llama(5120, 13824, 40, 40)))),
}


@dataclass(frozen=True)
class Measured:
    params: int
    weights: int  # bytes
    blocks: int  # bytes of the weights `--shard` shards
    saved: int  # bytes per example, attention scores and the loss's float32 logits left out
    scores: int  # bytes per example of saved [.., T, T] attention scores
    layers: int
    hidden: int
    vocab: int

    def recompute(self, tokens: int) -> int:
        """Per-block checkpointing: each layer's bfloat16 input `[tokens, hidden]` kept, and one
        layer's saved tensors alive while it is recomputed."""
        return self.layers * tokens * self.hidden * 2 + self.saved // self.layers

    def logits(self, tokens: int) -> int:
        return tokens * self.vocab * (2 + 4)  # bfloat16 logits and the loss's float32 copy


def measure(name: str, tokens: int) -> Measured:
    """Build `name` on fake tensors and count one forward's saved tensors (module docstring)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = CONFIGS[name]().eval()
    finally:
        torch.set_default_dtype(default)
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    for module in model.modules():  # fake tensors: the model's own checks on values are skipped as under tracing
        for key, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[key] = nn.Parameter(fake.from_tensor(param), requires_grad=False)
        for key, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[key] = fake.from_tensor(buffer)
    head = LanguageHead(model)
    config = head.language_model.config
    frozen = {id(p) for p in model.parameters()}
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in frozen and not (tensor._base is not None and id(tensor._base) in frozen):
            saved.append(tensor)
        return tensor

    with fake, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        embeds = torch.zeros(1, tokens, config.hidden_size, dtype=torch.bfloat16, device="meta", requires_grad=True)
        ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
        logits = head(ids, embeds)
        F.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    scores = sum(size(t) for t in saved if t.ndim >= 3 and tuple(t.shape[-2:]) == (tokens, tokens))
    total = sum(size(t) for t in saved)
    params = sum(p.numel() for p in model.parameters())
    sharded = sum(p.numel() for name, p in model.named_parameters() if ".layers." in name)
    return Measured(params, params * 2, sharded * 2, total - scores - tokens * config.vocab_size * 4, scores,
                    config.num_hidden_layers, config.hidden_size, config.vocab_size)


def largest_batch(weights: int, per_example: int) -> int:
    room = DEVICE_GIB * GiB * (1 - FREE) - weights
    return max(int(room // per_example), 0)


def large_models(console: Console, tokens: int) -> None:
    table = Table(title=f"a search step on 7B-13B models, {tokens} tokens per example, bfloat16 (fake tensors, "
                        f"nothing allocated)")
    for column in ("model", "params", "weights", "saved / example", "scores (math attention)", "--recompute / example",
                   "logits / example", f"micro-batch ({DEVICE_GIB} GiB): plain", "--recompute",
                   f"--shard, {SHARDS} GPUs: weights / GPU", "micro-batch"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in CONFIGS:
        m = measure(name, tokens)
        recompute = m.recompute(tokens)
        sharded = m.weights - m.blocks + m.blocks / SHARDS
        logits = m.logits(tokens)
        table.add_row(name, f"{m.params / 1e9:.2f} B", f"{m.weights / GiB:.1f} GiB", f"{m.saved / GiB:.2f} GiB",
                      f"{m.scores / GiB:.2f} GiB", f"{recompute / GiB:.2f} GiB", f"{logits / GiB:.2f} GiB",
                      str(largest_batch(m.weights, m.saved + logits)), str(largest_batch(m.weights, recompute + logits)),
                      f"{sharded / GiB:.1f} GiB", str(largest_batch(sharded, recompute + logits)))
    console.print(table)


PEAK = re.compile(r"peak memory ([\d.]+) GiB")


def shipped(console: Console, steps: int) -> None:
    space = REPO / "benchmarks" / "search_25.deos"
    table = Table(title=f"`deos search benchmarks/search_25.deos --space eos_25 --model embedded:llava --data embedded`, "
                        f"batch 16, {steps} steps")
    for column in ("mode", "s / step", "peak memory", "time vs plain", "memory vs plain"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    base: tuple[float, float] | None = None
    for mode, extra in (("plain", []), ("--recompute", ["--recompute"]), ("--accumulate 4", ["--accumulate", "4"])):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            argv = [sys.executable, "-m", "deos_dsl.cli", "search", str(space), "--space", "eos_25", "--model",
                    "embedded:llava", "--data", "embedded", "--out", str(out), "--batch", "16", "--steps", str(steps),
                    "--val", "0", "--device", "cpu", *extra]
            done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
            found = PEAK.search(done.stdout)
            if done.returncode != 0 or found is None:
                table.add_row(mode, "failed", (done.stderr or done.stdout).strip().splitlines()[-1][:80], "-", "-")
                continue
            # step time from the log's clock (steps 2..N: no tracing, no discretisation)
            clock = [json.loads(line)["seconds"] for line in (out / "search.jsonl").read_text().splitlines()]
        per_step, peak = (clock[-1] - clock[0]) / (len(clock) - 1), float(found.group(1))
        base = base or (per_step, peak)
        table.add_row(mode, f"{per_step:.2f}", f"{peak:.2f} GiB", f"{per_step / base[0]:.2f}x", f"{peak / base[1]:.2f}x")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=640, help="tokens per example (LLaVA-1.5: 576 image + 64 text)")
    parser.add_argument("--steps", type=int, default=12, help="steps of each measured search")
    parser.add_argument("--no-run", action="store_true", help="only the fake-tensor figures of the large models")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 160))
    large_models(console, args.tokens)
    if not args.no_run:
        shipped(console, args.steps)


if __name__ == "__main__":
    main()
