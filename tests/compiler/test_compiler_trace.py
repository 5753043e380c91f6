"""Tracing: every tracer reproduces the eager model; untraceable models get one clear error."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import fx, nn

from compiler_models import CASES, DataDependent, loaded, tensors, traced
from deos_dsl.compiler import UntraceableModelError, build_block_map, trace, trace_language_model
from deos_dsl.compiler.trace import (EAGER_TOLERANCE, EXPORT, GIVEN_GRAPH, GIVEN_PROGRAM, LANGUAGE_MODEL, SYMBOLIC,
                                    relative_error)


@pytest.mark.parametrize(("name", "tracer"), CASES)
def test_traced_graph_equals_eager(name: str, tracer: str):
    model, result = loaded(name), traced(name, tracer)
    assert result.tracer == tracer and not result.failures
    got, want = tensors(result.run()), tensors(model.model(*model.args, **model.kwargs))
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    computed = [n for n in result.graph_module.graph.nodes if n.op in ("call_function", "call_module")]
    assert all("val" in n.meta for n in computed if n.name != "_guards_fn")  # shapes everywhere


def test_dynamic_sequence_dim_is_recorded():
    symbols = traced("hf:Qwen2Model").dynamic_dims
    assert list(symbols) == ["inputs_embeds"] and list(symbols["inputs_embeds"]) == [1]
    assert symbols["inputs_embeds"][1].startswith("s")
    assert list(traced("hf:LlavaForConditionalGeneration").dynamic_dims) == ["input_ids"]
    # the embedded model's learned positions fix the question length: export specialises it
    assert traced("embedded").dynamic_dims == {}


def test_symbolic_trace_used_when_export_is_skipped():
    result = traced("embedded", SYMBOLIC)
    assert result.tracer == SYMBOLIC
    assert any(n.op == "call_module" for n in result.graph_module.graph.nodes)


def test_already_traced_input_is_accepted():
    model = loaded("embedded")
    program = torch.export.export(model.model, model.args, strict=False)
    from_program = trace(program, model.args)
    assert from_program.tracer == GIVEN_PROGRAM
    gm = fx.symbolic_trace(model.model)
    from_graph = trace(gm, model.args)
    assert from_graph.tracer == GIVEN_GRAPH
    assert all("val" in n.meta for n in gm.graph.nodes if n.op != "output")
    for result in (from_program, from_graph):
        torch.testing.assert_close(result.run(), model.model(*model.args), atol=1e-5, rtol=0)
        assert [len(s.blocks) for s in build_block_map(result).stacks] == [4, 4]


class Upcast(nn.Module):
    """What an RMSNorm does: computes in float32 and returns the input's dtype (`.to` twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        with torch.no_grad():  # export writes this region as a higher-order op's own graph (as HF's RoPE)
            scale = h.to(torch.float32).square().mean(-1, keepdim=True).rsqrt()
        return (h.to(torch.float32) * scale).to(h.dtype)


def test_traced_graph_runs_under_autocast_as_eager():
    # the CUDA search runs the float32 trace under bf16 autocast: export's dtype assertions
    # before each `.to` (the dtype the trace saw) must not survive into the graph; its values
    # are eager's within bf16 rounding
    upcast, hf = Upcast(), loaded("hf:Qwen2Model")
    example = (torch.randn(2, 5, 8),)
    cases = [(upcast, example, {}, trace(upcast, example)), (hf.model, hf.args, hf.kwargs, traced("hf:Qwen2Model"))]
    for model, args, kwargs, result in cases:
        assert result.tracer == EXPORT
        assert not [node for module in result.graph_module.modules() if isinstance(module, fx.GraphModule)
                    for node in module.graph.nodes if "_assert_tensor_metadata" in str(node.target)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, want = tensors(result.graph_module(*args, **kwargs)), tensors(model(*args, **kwargs))
        for a, b in zip(got, want, strict=True):  # a trace fixes `.to(h.dtype)` at the dtype it saw
            assert relative_error(b.float(), a.float()) < EAGER_TOLERANCE[torch.bfloat16]


def test_untraceable_model_gets_one_error_listing_every_tracer():
    with pytest.raises(UntraceableModelError) as caught:
        trace(DataDependent(), (torch.randn(2, 3, 4),))
    error = caught.value
    assert [tracer for tracer, _ in error.attempts] == [EXPORT, SYMBOLIC]
    text = str(error)
    assert text.startswith("cannot trace the model; tried 2 tracer(s):")
    for tracer, why in error.attempts:
        assert f"  - {tracer}: {why}" in text and "\n" not in why and why
    assert "hint:" in text and "ExportedProgram" in error.hint


class UntraceableVLM(nn.Module):
    """A VLM whose whole forward is data-dependent, with an HF language model inside."""

    def __init__(self, language_model: nn.Module) -> None:
        super().__init__()
        self.language_model = language_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.sum() > 0:
            input_ids = input_ids[input_ids > 0]
        return self.language_model(inputs_embeds=input_ids.float()[None, :, None].expand(1, -1, 32))[0]


def test_language_model_fallback_traces_the_decoder_on_inputs_embeds():
    language_model = loaded("hf:Qwen2Model").model
    result = trace(UntraceableVLM(language_model), (torch.ones(2, 5, dtype=torch.long),), language_model_length=20)
    assert result.tracer == LANGUAGE_MODEL and result.root is language_model
    assert [t for t, _ in result.failures] == [EXPORT, SYMBOLIC]
    assert result.kwargs["inputs_embeds"].shape == (2, 20, 32)
    torch.testing.assert_close(result.run().last_hidden_state, language_model(**result.kwargs).last_hidden_state,
                               atol=1e-5, rtol=0)


def test_language_model_of_llava_binds_its_decoder():
    result = trace_language_model(loaded("hf:LlavaForConditionalGeneration").model)
    block_map = build_block_map(result, spans={"decoder": (2, 18)})
    (stack,) = block_map.stacks
    assert stack.role == "decoder" and len(stack.blocks) == 3
    assert sorted(s.kind for s in stack.blocks[0].side) == ["mask", "positional", "positional"]
    assert block_map.spans["decoder"] == (2, 18)


class Noisy(nn.Module):
    """Random in eval mode: no graph can reproduce a call of it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + torch.rand_like(x)


class Scaled(nn.Module):
    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.factor


def test_a_trace_that_differs_from_eager_is_a_failed_tracer(monkeypatch: pytest.MonkeyPatch):
    """A graph 3% off the eager model (as a bidirectional mask traced causal was) is never used:
    that tracer counts as failed with the measured difference, and the next one is tried."""
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4)).eval()
    monkeypatch.setattr(sys.modules["deos_dsl.compiler.trace"], "_export", lambda m, a, k: fx.symbolic_trace(Scaled(m, 1.03)))
    result = trace(model, (torch.randn(2, 4),))
    assert result.tracer == SYMBOLIC and result.failures[0][0] == EXPORT
    assert result.failures[0][1].startswith("the traced graph differs from the eager model by 0.03 of output 0's scale "
                                            "(tolerance 0.001 in float32)")


def test_a_model_no_trace_can_reproduce_is_refused_unless_the_check_is_skipped(monkeypatch: pytest.MonkeyPatch):
    """A model random in eval mode (ViTMAE's patch masking) is named as not deterministic."""
    with pytest.raises(UntraceableModelError) as caught:
        trace(Noisy().eval(), (torch.randn(2, 4),))
    assert all("the eager model is not deterministic: two runs on the same inputs differ" in line
               for line in str(caught.value).splitlines()[1:3])
    assert "DEOS_SKIP_EAGER_CHECK=1" in caught.value.hint
    monkeypatch.setenv("DEOS_SKIP_EAGER_CHECK", "1")
    assert trace(Noisy().eval(), (torch.randn(2, 4),)).tracer == EXPORT
