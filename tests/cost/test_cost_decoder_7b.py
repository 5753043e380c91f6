"""The per-layer FLOPs of a LLaVA-1.5-7B-shaped decoder (Llama-7B widths, on the meta device, no
weights) equal the hand derivation exactly, as a polynomial in the layer's token count n:
q/k/v/o projections 2*n*d*(2d + 2*d_kv) (grouped-query sizes), attention QK^T + AV = 2*2*n^2*d,
SwiGLU MLP 3*2*n*d*m; and causal halving counts n(n+1)/2 pairs where attention is causal."""

from __future__ import annotations

import pytest
import sympy
import torch

from cost_cases import mapped
from deos_dsl.compiler import build_block_map, trace
from deos_dsl.cost import Conventions
from deos_dsl.cost.report import N, local_formula
from deos_dsl.cost.symbols import B, N_TEXT, N_VIS
from deos_dsl.passes.attach_cost import attach_cost

D, M, HEADS, VISUAL, PROMPT, START = 4096, 11008, 32, 576, 640, 5


def _decoder(kv_heads: int):
    import transformers as tf

    config = tf.LlamaConfig(vocab_size=32064, hidden_size=D, intermediate_size=M, num_hidden_layers=2,
                            num_attention_heads=HEADS, num_key_value_heads=kv_heads, max_position_embeddings=4096)
    with torch.device("meta"):
        model = tf.LlamaModel(config).eval().requires_grad_(False)
        embeds = torch.zeros(1, PROMPT, D)
    traced = trace(model, (), {"inputs_embeds": embeds, "use_cache": False})
    return attach_cost(build_block_map(traced, spans={"decoder": (START, START + VISUAL)}))


@pytest.mark.parametrize("kv_heads", [32, 8])
def test_layer_equals_hand_derivation(kv_heads: int):
    cost = _decoder(kv_heads)
    d_kv = D * kv_heads // HEADS
    hand = B * (2 * N * D * (2 * D + 2 * d_kv) + 2 * 2 * N**2 * D + 3 * 2 * N * D * M)
    layers = [g for g in cost.groups if g.role == "decoder"]
    assert len(layers) == 2
    for layer in layers:
        assert layer.length == N_TEXT + N_VIS
        assert sympy.expand(local_formula(layer.total(), layer.length) - hand) == 0
        assert cost.evaluate(layer.total(), cost.point()) == int(hand.subs({B: 1, N: PROMPT}))
    assert cost.base == {B: 1, N_TEXT: PROMPT - VISUAL, N_VIS: VISUAL}


def test_causal_halving_where_attention_is_causal():
    """The embedded decoder's attention is causal (`is_causal=True`): halving counts n(n+1)/2
    query-key pairs there, the vision encoder's (bidirectional) attention is unchanged."""
    block_map, full = mapped("embedded")
    halved = attach_cost(block_map, conventions=Conventions(causal_halving=True))
    for dense, half in zip(full.groups, halved.groups):
        attention = dense.flops.get("attention", 0)
        if dense.role == "decoder":
            n = dense.length
            assert sympy.expand(half.flops["attention"] - attention.subs(n**2, n * (n + 1) / 2)) == 0
        else:
            assert half.flops.get("attention", 0) == attention
    assert halved.dense_flops() < full.dense_flops()
