"""Both forms trace with torch.export (non-strict), as the compiler inserts them into graphs."""

from __future__ import annotations

import torch

from deos_dsl.ops import Regime, hidden_norm, reduce_tokens, relaxed_reduce

torch.set_num_threads(1)


class HardSite(torch.nn.Module):
    def forward(self, x):
        r = reduce_tokens(x, range(2, 18), hidden_norm(x), keep=0.25, regime=Regime(gamma=0.5, tau=0.2, proportional=True))
        return r.x, r.kept_idx, r.attn_bias


class RelaxedSite(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.log_tau = torch.nn.Parameter(torch.tensor(-1.0))
        self.keep = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        regime = Regime(gamma=0.5, tau=self.log_tau.exp(), proportional=True)
        r = relaxed_reduce(x, range(2, 18), hidden_norm(x), self.keep, regime=regime, temperature=0.5)
        return r.x, r.attn_bias


def test_hard_and_relaxed_forms_export_with_dynamic_batch():
    x = torch.randn(2, 20, 8)
    for module in (HardSite(), RelaxedSite()):
        program = torch.export.export(module, (x,), strict=False, dynamic_shapes=({0: torch.export.Dim("B")},))
        x3 = torch.randn(3, 20, 8)
        for got, want in zip(program.module()(x3), module(x3)):
            torch.testing.assert_close(got, want)
    assert HardSite()(x)[0].shape == (2, 4 + 4, 8)
