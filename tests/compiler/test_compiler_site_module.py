"""The relaxed site module: parameters initialised from the IR (learned = Parameter, fixed =
buffer), exact gate limits, identity points, keep counts relative to the entering tokens."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from deos_dsl.compiler.hard_site import plan_site
from deos_dsl.compiler.site_module import SiteModule
from deos_dsl.errors import DeosCompileError, SpaceError
from relaxed_cases import bundled, space_from

SPAN = (2, 18)


def module_of(space_name: tuple[str, str], index: int = 0) -> SiteModule:
    space = bundled(*space_name)
    return SiteModule("s", space.sites[index], SPAN, 8)


def test_learned_space_initialises_every_parameter_from_the_ir():
    module = module_of(("eos.deos", "eos"), 1)
    learned = {name for name, _ in module.named_parameters()}
    assert learned == {"alpha", "beta", "gamma", "tau", "rho", "nu"}
    assert "theta" in dict(module.named_buffers())
    expected = {"alpha": 0.5, "beta": 0.5, "gamma": 0.1, "tau": 0.5, "rho": 0.0, "nu": 1.0}
    for key, value in expected.items():
        assert float(module.value(key).detach()) == pytest.approx(value, abs=2e-4), key
    assert module.regime().theta is None  # theta: 0 is "no threshold"


def test_keep_ratio_is_the_designs_sigmoid_map():
    module = module_of(("eos.deos", "eos"), 1)
    module.beta.data.fill_(0.7)
    c_min = 0.05
    assert float(module.keep.detach()) == pytest.approx(c_min + (1 - c_min) * torch.sigmoid(torch.tensor(0.7)).item())


def test_fixed_corner_is_buffers_with_exact_gate():
    module = module_of(("fastv.deos", "fastv"))
    assert not list(module.parameters())
    assert float(module.gate) == 1.0 and float(module.keep) == 0.5
    assert float(module.value("gamma")) == 0.0 and math.isinf(float(module.value("tau")))


def test_gate_closed_and_keep_all_are_exact_identities():
    module = module_of(("eos.deos", "eos"), 1)
    x, scores = torch.randn(2, 24, 8), torch.rand(2, 24)
    module.alpha.data.fill_(-math.inf)
    y, mask, _, bias = module(x, scores)
    assert torch.equal(y, x) and torch.equal(mask, torch.ones(2, 24)) and torch.equal(bias, torch.zeros(2, 24))
    module.alpha.data.fill_(0.0)
    y, _, _, bias = module(x, scores)
    assert not torch.allclose(y, x) and (bias[:, SPAN[0]:SPAN[1]] < 0).any()
    assert torch.equal(bias[:, :SPAN[0]], torch.zeros(2, SPAN[0]))  # protected tokens never masked


def test_counts_are_relative_to_the_entering_tokens(tmp_path: Path):
    space = space_from("space s {\n  site decoder.layers[0] {\n    retain: drop 4 tokens\n    score: norm\n"
                       "    operator: prune\n  }\n}\n", tmp_path)
    module = SiteModule("s", space.sites[0], SPAN, 8)
    entering = torch.tensor([16.0, 10.0])
    assert torch.equal(module.keep_ratio(entering) * 16, torch.tensor([12.0, 6.0]))
    module.temperature.fill_(0.0)
    mask_in = torch.ones(2, 24)
    mask_in[1, 12:18] = 0.0  # example 1: an earlier site dropped 6 visual tokens
    _, mask, _, _ = module(torch.randn(2, 24, 8), torch.rand(2, 24) + mask_in, mask_in)
    assert mask[:, SPAN[0]:SPAN[1]].sum(dim=1).tolist() == [12.0, 6.0]


def test_only_a_fused_extra_token_has_no_relaxed_form():
    x, scores = torch.randn(2, 24, 8), torch.rand(2, 24)
    y, _, _, _ = module_of(("visionzip.deos", "visionzip"))(x, scores)  # contextual targets keep the shape
    assert y.shape == x.shape
    with pytest.raises(DeosCompileError, match="no shape-preserving relaxed form"):
        module_of(("evit.deos", "evit"))(x, scores)


def test_a_bipartite_merge_removes_at_most_half_the_span(tmp_path: Path):
    """ToMe's cap `r = min(r, n // 2)`: dropping 16 of 16 (or of 11) tokens keeps 8 (or 6), in the
    hard plan and the relaxed keep ratio alike; a prune has no such cap."""
    tome = bundled("tome.deos", "tome")
    module = SiteModule("s", tome.sites[0], (1, 17), 8)
    assert module.bipartite and module.count_mode == "drop"
    assert [plan_site("s", module, (1, 1 + n)).keep for n in (16, 11, 40)] == [8, 6, 24]
    assert torch.equal(module.keep_ratio(torch.tensor([16.0, 11.0])) * 16, torch.tensor([8.0, 6.0]))
    prune = space_from("space s {\n  site vision.layers[0] {\n    retain: drop 16 tokens\n    score: norm\n"
                       "    operator: prune\n  }\n}\n", tmp_path)
    assert plan_site("s", SiteModule("s", prune.sites[0], (1, 33), 8), (1, 17)).keep == 0  # after an upstream cut
    with pytest.raises(SpaceError, match="`retain` drops 16 tokens, but 16 reducible tokens reach `s` on this model"):
        SiteModule("s", prune.sites[0], (1, 17), 8)


def test_a_count_the_model_cannot_honour_is_an_error_at_its_position(tmp_path: Path):
    space = space_from("space s {\n  site decoder.layers[0] {\n    retain: choices(8 tokens, 64 tokens)\n"
                       "    score: norm\n    operator: prune\n  }\n}\n", tmp_path)
    with pytest.raises(SpaceError) as caught:
        SiteModule("s", space.sites[0], SPAN, 8)
    (error,) = caught.value.diagnostics
    assert (error.line, error.col) == (3, 31) and error.message == (
        "`retain` keeps 64 tokens, but 16 reducible tokens reach `s` on this model")
    assert error.hint == "keep at most 16 tokens, or write a percent"
    assert SiteModule("s", space.sites[0], (0, 64), 8).count_mode is None  # 64 tokens reach it: fine
