"""The embedded model: structure contract, tracing (fx and export) equal to eager."""

import pytest
import torch
import torch.fx

from deos_dsl.embedded import vqa
from deos_dsl.embedded.model import EmbeddedVQAModel, ModelConfig


@pytest.fixture(scope="module")
def model_and_inputs():
    torch.manual_seed(0)
    model = EmbeddedVQAModel(ModelConfig()).eval()
    batch = vqa.VQADataset("val", 3).batch()
    return model, (batch.pixels, batch.question)


def test_structure_contract(model_and_inputs):
    model, (pixels, question) = model_and_inputs
    cfg = model.config
    assert model.visual_span == (0, 144) and model.vision_grid == (12, 12)
    assert len(model.vision.layers) == cfg.vision_layers and len(model.decoder.layers) == cfg.decoder_layers
    assert model(pixels, question).shape == (3, len(vqa.ANSWERS))
    assert model.visual_tokens(pixels).shape == (3, 144, cfg.decoder_dim)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 3e6


def test_blocks_map_residual_stream_and_accept_fewer_tokens(model_and_inputs):
    model, (pixels, question) = model_and_inputs
    for block in list(model.vision.layers) + list(model.decoder.layers):
        for n in (150, 37):
            x = torch.randn(2, n, model.config.decoder_dim)
            assert block(x).shape == x.shape


def test_decoder_is_causal(model_and_inputs):
    model, (pixels, question) = model_and_inputs
    x = model.decoder.embed(model.visual_tokens(pixels), question)
    y = x.clone()
    y[:, -1] += 1.0
    torch.testing.assert_close(model.decoder(x)[:, :-1], model.decoder(y)[:, :-1])
    assert not torch.allclose(model.decoder(x)[:, -1], model.decoder(y)[:, -1])


def test_fx_symbolic_trace_matches_eager(model_and_inputs):
    model, inputs = model_and_inputs
    gm = torch.fx.symbolic_trace(model)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.nn.functional.scaled_dot_product_attention) == 8
    torch.testing.assert_close(gm(*inputs), model(*inputs), atol=1e-5, rtol=0)


def test_torch_export_matches_eager(model_and_inputs):
    model, inputs = model_and_inputs
    ep = torch.export.export(model, inputs, strict=False)
    stacks = [n.meta.get("nn_module_stack", {}) for n in ep.graph.nodes if n.op == "call_function"]
    paths = {path for s in stacks for path, _ in s.values()}
    assert {"vision.layers.0", "projector", "decoder.layers.3", "head"} <= paths
    torch.testing.assert_close(ep.module()(*inputs), model(*inputs), atol=1e-5, rtol=0)


def test_reduced_visual_set_keeps_its_positions(model_and_inputs):
    model, (pixels, question) = model_and_inputs
    visual = model.visual_tokens(pixels)
    index = torch.arange(0, 144, 4)
    x = model.decoder.embed(visual[:, index], question, index)
    assert x.shape == (3, 36 + vqa.QUESTION_LEN, model.config.decoder_dim)
    full = model.decoder.embed(visual, question)
    torch.testing.assert_close(x[:, :36], full[:, index])
    torch.testing.assert_close(x[:, 36:], full[:, 144:])
