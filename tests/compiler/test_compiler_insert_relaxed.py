"""Pass 3 (insert_relaxed): one site module per bound site, later attention masked by its bias;
at the identity point (gate closed, or keep everything) the relaxed graph equals the original
output to 1e-5; gradients reach the site modules' parameters and never the frozen model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from compiler_models import CASES, tensors
from deos_dsl.compiler.graph_edit import sdpa_argument, sdpa_nodes
from deos_dsl.compiler.masking import key_logits, key_mask
from deos_dsl.compiler.sites import RELAXED_PREFIX as PREFIX
from relaxed_cases import DECODER, DECODERS, EAGER_LAST, VISION, Relaxed, relax, space_from


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{t.split('.')[-1]}" for n, t in CASES])
def relaxed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Relaxed:
    name, tracer = request.param
    text = DECODER if name in DECODERS else VISION
    return relax(name, space_from(text, tmp_path_factory.mktemp("space")), tracer)


def close_all(relaxed: Relaxed) -> None:
    for module in relaxed.modules.values():
        module.alpha.data.fill_(-math.inf)


def outputs(relaxed: Relaxed) -> list[torch.Tensor]:
    return tensors(relaxed.block_map.traced.run())


def assert_identity(relaxed: Relaxed) -> None:
    got = outputs(relaxed)
    assert len(got) == len(relaxed.reference)
    for a, b in zip(got, relaxed.reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_structure_one_module_per_site_and_later_attention_masked(relaxed: Relaxed):
    gm = relaxed.gm
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and str(n.target).startswith(PREFIX)]
    assert len(calls) == len(relaxed.sites) == 2
    for call, site in zip(calls, relaxed.sites):
        assert call.args[0] is site.node and call.meta["nn_module_stack"] == site.node.meta["nn_module_stack"]
        assert call.meta["val"][0].shape == site.node.meta["val"].shape
        y = next(u for u in call.users if u.args[1] == 0)
        assert not [u for u in site.node.users if u is not call and u.meta.get("deos_score") is None]  # all moved to y
        assert y.users
    stack = relaxed.sites[0].block.stack
    blocks = next(s for s in relaxed.block_map.stacks if s.prefix == stack).blocks
    first = relaxed.sites[0].block.index
    for block in blocks:
        for sdpa in sdpa_nodes(block.nodes):
            mask = sdpa_argument(sdpa, "attn_mask")
            masked = getattr(mask, "target", None) is key_mask
            assert masked == (block.index > first)
            if masked:
                assert sdpa_argument(sdpa, "is_causal") is False


def test_model_frozen_site_parameters_learned(relaxed: Relaxed):
    trainable = {n for n, p in relaxed.gm.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(PREFIX) for n in trainable)
    assert {"alpha", "beta", "gamma", "tau", "nu"} <= {n.split(".")[1] for n in trainable}


def test_gradients_reach_only_site_parameters(relaxed: Relaxed):
    relaxed.gm.zero_grad(set_to_none=True)
    loss = sum(t.float().square().mean() for t in outputs(relaxed) if t.is_floating_point())
    loss.backward()
    for name, param in relaxed.gm.named_parameters():
        if name.startswith(PREFIX):
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
        else:
            assert param.grad is None, name
    gates = [m.alpha.grad for m in relaxed.modules.values()]
    assert any(float(g.abs()) > 0 for g in gates)


def test_gate_closed_is_identity(relaxed: Relaxed):
    saved = {name: m.alpha.detach().clone() for name, m in relaxed.modules.items()}
    close_all(relaxed)
    try:
        assert_identity(relaxed)
    finally:
        for name, m in relaxed.modules.items():
            m.alpha.data.copy_(saved[name])


def test_gate_open_keeping_everything_is_identity(relaxed: Relaxed):
    state = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in relaxed.modules.items()}
    try:
        for module in relaxed.modules.values():
            module.alpha.data.fill_(math.inf)  # gate exactly 1
            module.beta.data.fill_(40.0)  # keep ratio exactly its upper bound 1
            module.gamma.data.fill_(-40.0)  # no transfer
            module.temperature.fill_(0.0)  # hard top-k: every token kept
            if module.specs["rho"].learned:
                module.rho.data.fill_(-40.0)  # no reweighting
        assert_identity(relaxed)
    finally:
        for name, module in relaxed.modules.items():
            module.load_state_dict(state[name])


def test_open_gate_really_changes_the_output(relaxed: Relaxed):
    for module in relaxed.modules.values():
        module.alpha.data.fill_(math.inf)
    try:
        got = outputs(relaxed)
        assert any((a - b).abs().max() > 1e-4 for a, b in zip(got, relaxed.reference))
    finally:
        for module in relaxed.modules.values():
            module.alpha.data.fill_(0.0)


def test_projector_site_masks_the_decoder(tmp_path: Path):
    text = DECODER.replace("site decoder.layers[0] {}", "site projector { score: norm }")
    result = relax("hf:LlavaForConditionalGeneration", space_from(text, tmp_path))
    decoder = result.block_map.stack("decoder")
    assert decoder is not None
    for block in decoder.blocks:  # the projector's bias reaches every decoder layer
        assert all(getattr(sdpa_argument(s, "attn_mask"), "target", None) is key_mask for s in sdpa_nodes(block.nodes))
    close_all(result)
    assert_identity(result)


def test_eager_attention_is_masked_as_the_fused_kernel_is(tmp_path: Path):
    """The relaxed masking reaches blocks that compute attention eagerly (matmul + softmax): their
    logits get the same key bias before their own softmax, so with every gate open the relaxed
    graph of the eager model equals the fused model's (before, eager blocks were left unmasked)."""
    space = space_from(EAGER_LAST, tmp_path)
    results = [relax(name, space) for name in ("hf:Qwen2Model", "module:compiler_models:eager_qwen2")]
    eager = results[1]
    biased = [n for n in eager.gm.graph.nodes if n.target is key_logits]
    assert len(biased) == len(eager.block_map.stack("decoder").blocks) - 1  # every block after the first site
    outputs_open = []
    for result in results:
        for module in result.modules.values():
            module.alpha.data.fill_(math.inf)
        outputs_open.append(outputs(result))
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(outputs_open[1], eager.reference))
    for fused, computed in zip(*outputs_open):
        torch.testing.assert_close(computed, fused, atol=1e-5, rtol=0)
