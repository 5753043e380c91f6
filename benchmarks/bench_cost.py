"""Cost-model benchmark: symbolic FLOPs of a LLaVA-1.5-7B-shaped model on the meta device (no
weights), and FastV's reduced / dense ratios next to the ones the FastV authors print.

    .venv/bin/python benchmarks/bench_cost.py [--no-13b]

One trace of the whole 7B-shaped model (shapes from `bench_compile.py`: CLIP ViT-L/14-336
tower, Llama-7B decoder, 576 image tokens in a 640-token prompt) with two FastV sites (after
decoder layers 1 and 2: K = 2 and 3, pruning before layer K); every FastV schedule is then an
evaluation of the same expression.
Printed: the time to trace, bind and cost it; the dense FLOPs at 576 visual tokens (whole model
and decoder layers only); the per-layer formula; and the ratios of FastV K=2 R=50% / 75% and
K=3 R=50%, counted like FastV (decoder layers only) and over the whole model, at 64 text tokens
and, from the same formula, at 32. Then a 13B-shaped decoder (language model alone, 40 layers,
width 5120, MLP 13824) for the paper's headline setting.

Printed figures of the authors (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2",
arXiv 2403.06764): "45% reduction in FLOPs for LLaVA-1.5-13B" (abstract; FastV K=2 R=50%,
ratio 55%), and "LLaVA-1.5-7B FastV K=3 R=50% (FLOPS=57%)" (github.com/pkunlp-icler/FastV,
README, lmms-eval table). FastV counts a layer as 4nd^2 + 2n^2d + 2ndm (multiply-adds, two MLP
matrices); we count 2*M*K*N per product with LLaMA's three MLP matrices; `fastv formula` below
is their formula at the same n, for reference.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_compile import PROMPT, START, TEXT, VISION, VISUAL, build, trace_prompt  # noqa: E402

from deos_dsl.compiler import TracedModel, build_block_map, trace_language_model  # noqa: E402
from deos_dsl.cost import Cost, SitePoint  # noqa: E402
from deos_dsl.cost.report import human, local_formula  # noqa: E402
from deos_dsl.cost.symbols import N_TEXT  # noqa: E402
from deos_dsl.frontend import load_spaces  # noqa: E402
from deos_dsl.passes.attach_cost import attach_cost  # noqa: E402
from deos_dsl.passes.bind_sites import bind_sites  # noqa: E402
from deos_dsl.passes.insert_scores import insert_scores  # noqa: E402

SPACES = Path(__file__).resolve().parents[1] / "spaces"
# FastV K = 2 and K = 3: before layer K by layer K - 1's attention, i.e. after decoder layers 1
# and 2 (a schedule switches one on)
FASTV_SITES = f"""import "{SPACES / 'common.deos'}"
space fastv_k2_k3 extends baseline {{
  defaults {{
    activate: on
    retain: 50%
    score: attention(query: last)
    operator: prune
  }}
  site decoder.layers[1] {{}}
  site decoder.layers[2] {{}}
}}
"""
SETTINGS = (("K=2 R=50%", 2, 0.50), ("K=2 R=75%", 2, 0.75), ("K=3 R=50%", 3, 0.50))
PAPER = {("7B", "K=3 R=50%"): 0.57, ("13B", "K=2 R=50%"): 0.55}
TEXT_13B = dict(TEXT, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40)


def fastv_formula(n: int, k: int, r: float, d: int, m: int, layers: int) -> float:
    """FastV's own ratio: layers of 4nd^2 + 2n^2d + 2ndm, R of the visual tokens gone after K."""
    def layer(t: float) -> float:
        return 4 * t * d * d + 2 * t * t * d + 2 * t * d * m

    return (k * layer(n) + (layers - k) * layer(n - r * VISUAL)) / (layers * layer(n))


def cost_of(traced: TracedModel, spans: dict[str, tuple[int, int]]) -> Cost:
    """The cost of `traced` with the two FastV sites bound and scored."""
    block_map = build_block_map(traced, spans=spans)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fastv.deos"
        path.write_text(FASTV_SITES)
        space = load_spaces(path)[0]
    sites = bind_sites(space, block_map)
    return attach_cost(block_map, sites, insert_scores(space, block_map, sites))


def schedule(cost: Cost, k: int, r: float) -> dict[str, SitePoint]:
    """FastV K = `k` (the site after layer k - 1) keeping `1 - r` of the visual tokens (the other site off)."""
    return {site.name: SitePoint(site.block.endswith(f"layers.{k - 1}"), round((1 - r) * VISUAL)) for site in cost.sites}


def decoder_ratio(cost: Cost, plan: dict[str, SitePoint], text: int) -> float:
    """Reduced / dense FLOPs of the decoder layers (FastV's scope), `N_text = text`."""
    layers = sum((g.total() for g in cost.groups if g.role == "decoder"), start=0)
    dense, point = cost.point(), cost.point(plan)
    dense[N_TEXT] = point[N_TEXT] = text
    return cost.evaluate(layers, point) / cost.evaluate(layers, dense)


def report(name: str, cost: Cost, d: int, m: int, layers: int, whole: bool) -> None:
    text = cost.base[N_TEXT]
    decoder = [g for g in cost.groups if g.role == "decoder"]
    print(f"{name}: dense FLOPs at {VISUAL} visual + {text} text tokens, batch 1: "
          + (f"whole model {human(cost.dense_flops())} ({cost.dense_flops()}), " if whole else "")
          + f"decoder layers {human(sum(cost.evaluate(g.total(), cost.point()) for g in decoder))}")
    print(f"  one decoder layer (n tokens): {local_formula(decoder[0].total(), decoder[0].length)}")
    for label, k, r in SETTINGS:
        plan = schedule(cost, k, r)
        paper = PAPER.get((name, label))
        line = (f"  FastV {label}: decoder layers {decoder_ratio(cost, plan, text):.1%} at {text} text tokens, "
                f"{decoder_ratio(cost, plan, 32):.1%} at 32")
        if whole:
            line += f"; whole model {cost.flops(plan) / cost.dense_flops():.1%}"
        line += f"; fastv formula {fastv_formula(VISUAL + text, k, r, d, m, layers):.1%}"
        print(line + (f"; paper {paper:.0%}" if paper else "; paper: not printed"))


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-13b", action="store_true", help="skip the 13B-shaped decoder")
    with_13b = not parser.parse_args().no_13b
    t0 = time.perf_counter()
    traced = trace_prompt(build())
    t1 = time.perf_counter()
    cost = cost_of(traced, {"decoder": (START, START + VISUAL)})
    t2 = time.perf_counter()
    print(f"7B-shaped LLaVA on meta: build + trace {t1 - t0:.1f} s, block map + bind + scores + cost {t2 - t1:.1f} s; "
          f"total {t2 - t0:.1f} s (target < 60 s); vision tower {VISION['num_hidden_layers']} layers")
    report("7B", cost, TEXT["hidden_size"], TEXT["intermediate_size"], TEXT["num_hidden_layers"], whole=True)
    if with_13b:
        from deos_dsl.compiler.tiny_models import llava_config
        import transformers as tf

        t3 = time.perf_counter()
        with torch.device("meta"):
            big = tf.LlavaForConditionalGeneration(llava_config(VISION, TEXT_13B)).eval().requires_grad_(False)
        cost_13b = cost_of(trace_language_model(big, PROMPT), {"decoder": (START, START + VISUAL)})
        print(f"13B-shaped decoder (language model alone) traced and costed in {time.perf_counter() - t3:.1f} s")
        report("13B", cost_13b, TEXT_13B["hidden_size"], TEXT_13B["intermediate_size"], TEXT_13B["num_hidden_layers"],
               whole=False)


if __name__ == "__main__":
    main()
