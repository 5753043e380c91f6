"""Every bundled space compiles, costs and emits on the shipped HF LLaVA (`embedded:llava`), and
the emitted model runs exactly the FLOPs its symbolic cost predicts (FlopCounterMode, math
attention), the tower's dead code measured on the model in hand; it runs on the processor's
real inputs, its logits one row per token the plan leaves."""

from __future__ import annotations

import pytest
import sympy
import torch

from cost_cases import SPACES, counted, loaded
from deos_dsl.compiler.models import LLAVA
from deos_dsl.frontend import load_spaces
from deos_dsl.pipeline import compile_emitted, cost_space

BUNDLED = [(path.name, space.name) for path in sorted(SPACES.glob("*.deos")) for space in load_spaces(path)]


def test_every_bundled_space_is_listed():
    assert len(BUNDLED) >= 10 and ("eos.deos", "eos") in BUNDLED and ("fastv.deos", "fastv") in BUNDLED


@pytest.mark.parametrize("file,name", BUNDLED)
def test_bundled_space_on_the_shipped_model(file: str, name: str):
    space = next(s for s in load_spaces(SPACES / file) if s.name == name)
    model = loaded(LLAVA)
    cost, schedule = cost_space(space, model)
    dead_code = sympy.Add(*cost.dead.values())
    dead, dense_dead = (cost.evaluate(dead_code, cost.point(at)) for at in (schedule, None))
    assert counted(lambda: model.model(*model.args, **model.kwargs), math=True) == cost.dense_flops() + dense_dead
    emitted = compile_emitted(space, model)
    assert counted(emitted.run, math=True) == cost.flops(schedule) + dead
    with torch.no_grad():
        output = emitted.run()
    logits = output.logits if hasattr(output, "logits") else output[0]
    decoder = [out for name, (_, out) in emitted.lengths.items() if "language_model" in name]
    expected = min(decoder) if decoder else model.kwargs["input_ids"].shape[1]
    assert logits.shape[1] == expected if decoder else logits.shape[1] <= expected
    assert bool(torch.isfinite(logits).all())
