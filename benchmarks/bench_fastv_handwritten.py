"""Benchmark: is deos's emitted FastV as fast as FastV written by hand?

FastV (K = 2, R = 50%: after decoder layer 1, keep the half of the image tokens that the last
prompt token attends most in layer 1, mean over heads) two ways on the same HF LLaVA (default
the shipped `embedded:llava`) and the same prompts (the first B of the shipped benchmark's test
split):
- EMITTED: `spaces/fastv.deos` compiled by deos (`compile_emitted`: traced graph, hard site);
- HAND-WRITTEN: the model's own modules called in a plain loop below (embeddings, image features
  scattered over the placeholders, RoPE tables, decoder layers, norm, head), the score
  recomputed from layer 1's query row and keys, and the pruning a top-k and one gather of the
  hidden states, the RoPE tables and the mask.
Both must give the same logits (checked, printed as the largest difference); their latencies are
measured interleaved with the dense model's (medians of --repeats rounds).
Target: emitted / hand-written latency <= 1.05 at B=1 and B=32.

    .venv/bin/python benchmarks/bench_fastv_handwritten.py [--model M] [--batch-sizes 1 32] [--repeats 20]
                                                           [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from deos_dsl.errors import DeosError
from deos_dsl.frontend import load_spaces
from deos_dsl.measure import median_latencies, model_and_prompts
from deos_dsl.measure.render import markdown_table
from deos_dsl.pipeline import compile_emitted

FASTV = Path(__file__).resolve().parents[1] / "spaces" / "fastv.deos"
LAYER, KEEP = 1, 0.5  # FastV's K - 1 and 1 - R, as in spaces/fastv.deos


def last_row_attention(block: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor, allowed: Tensor,
                       last: Tensor) -> Tensor:
    """`[B, T]`: the attention the last real token pays every key in `block`, mean over heads."""
    attention, x = block.self_attn, block.input_layernorm(hidden)
    batch, length, _ = x.shape
    q = attention.q_proj(x).view(batch, length, -1, attention.head_dim).transpose(1, 2)
    k = attention.k_proj(x).view(batch, length, -1, attention.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    rows = torch.arange(batch, device=x.device)
    query = q[rows, :, last][:, :, None]  # [B, H, 1, d]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (query @ k.transpose(-1, -2)) * attention.scaling
    logits = logits.masked_fill(~allowed[rows, :, last][:, :, None], -math.inf)
    return logits.softmax(dim=-1).mean(dim=1)[:, 0]


def fastv(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor) -> Tensor:
    """Logits `[B, T', V]` of FastV written by hand (module docstring)."""
    language_model = model.model.language_model
    image = input_ids == model.config.image_token_id
    features = model.model.get_image_features(pixel_values=pixel_values)
    features = torch.cat(list(getattr(features, "pooler_output", features)))
    hidden = language_model.embed_tokens(input_ids).masked_scatter(image[..., None], features)
    batch, length = input_ids.shape
    positions = torch.arange(length, device=input_ids.device)[None].expand(batch, -1)
    cos, sin = language_model.rotary_emb(hidden, positions)
    allowed = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()[None, None] \
        & attention_mask.bool()[:, None, None, :]
    where = image[0].nonzero()[:, 0]
    start, end = int(where[0]), int(where[-1]) + 1
    keep = math.ceil(KEEP * (end - start))
    for index, block in enumerate(language_model.layers):
        if index == LAYER:
            score = last_row_attention(block, hidden, cos, sin, allowed, attention_mask.sum(dim=1) - 1)
        hidden = block(hidden, attention_mask=allowed, position_embeddings=(cos, sin))
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        if index == LAYER:  # prune: keep the top image tokens, in order, and everything around them
            chosen = score[:, start:end].topk(keep, dim=1).indices.sort(dim=1).values + start
            around = torch.arange(length, device=hidden.device)
            kept = torch.cat([around[:start].expand(batch, -1), chosen, around[end:].expand(batch, -1)], dim=1)
            hidden = hidden.gather(1, kept[..., None].expand(-1, -1, hidden.shape[-1]))
            cos = cos.gather(1, kept[..., None].expand(-1, -1, cos.shape[-1]))
            sin = sin.gather(1, kept[..., None].expand(-1, -1, sin.shape[-1]))
            allowed = allowed.gather(2, kept[:, None, :, None].expand(-1, 1, -1, length))
            allowed = allowed.gather(3, kept[:, None, None, :].expand(-1, 1, kept.shape[1], -1))
    return model.lm_head(language_model.norm(hidden))


def row(size: int, seconds: dict[str, float], difference: float) -> tuple[str, ...]:
    """B, the three latencies (ms), emitted / hand-written, dense / emitted, the logit difference."""
    milliseconds = [f"{seconds[name] * 1e3:.2f}" for name in ("dense", "emitted", "hand-written")]
    return (str(size), *milliseconds, f"{seconds['emitted'] / seconds['hand-written']:.3f}",
            f"{seconds['dense'] / seconds['emitted']:.2f}", f"{difference:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:llava")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], metavar="B")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    rows = []
    try:
        loaded, device, batches = model_and_prompts(args.model, args.device, args.batch_sizes)
        model = loaded.model
        print(f"model {args.model}, device {device}, {torch.get_num_threads()} thread(s), FastV K=2 R=50%, "
              f"first B test prompts, median of {args.repeats} interleaved rounds", flush=True)
        (space,) = [space for space in load_spaces(FASTV) if space.name == "fastv"]
        for size in args.batch_sizes:
            inputs = batches[size]
            emitted = compile_emitted(space, dataclasses.replace(loaded, kwargs=inputs)).module
            with torch.inference_mode():
                ours, theirs = emitted(**inputs).logits, fastv(model, **inputs)
            # each row's last real token, in the pruned sequence (the pruned tokens precede it)
            last = inputs["attention_mask"].sum(dim=1) - 1 - (inputs["input_ids"].shape[1] - ours.shape[1])
            rows_b = torch.arange(size, device=device)
            difference = (ours[rows_b, last] - theirs[rows_b, last]).abs().max().item()
            times = median_latencies({"dense": lambda: model(**inputs), "emitted": lambda: emitted(**inputs),
                                      "hand-written": lambda: fastv(model, **inputs)}, args.repeats, warmup=3,
                                     device=device)
            rows.append(row(size, times, difference))
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    except DeosError as error:
        sys.exit(f"error: {error}")
    header = ("B", "dense ms", "emitted ms", "hand-written ms", "emitted / hand-written", "dense / emitted",
              "max |logit difference|")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
