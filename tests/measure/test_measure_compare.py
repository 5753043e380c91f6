"""`compare` on the emitted FastV graph of the embedded model: fewer counted FLOPs than the
dense model, the accuracy the model's own argmax answers give, and speedups and efficiency
consistent with each other (structure only: no wall-clock time is asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deos_dsl.compiler.models import resolve_model
from deos_dsl.embedded.evaluate import accuracy_per_family
from deos_dsl.embedded.vqa import Batch
from deos_dsl.frontend import load_spaces
from deos_dsl.measure import Comparison, Subject, compare, comparison_markdown
from deos_dsl.pipeline import compile_emitted
from deos_dsl.tasks import make_task

FASTV = Path(__file__).resolve().parents[2] / "spaces" / "fastv.deos"
BATCH_SIZES = (1, 4)
LOADED = resolve_model("embedded")
TASK = make_task("embedded", LOADED)


@pytest.fixture(scope="module")
def measured() -> tuple[Comparison, torch.nn.Module]:
    (space,) = [s for s in load_spaces(FASTV) if s.name == "fastv"]
    emitted = compile_emitted(space, LOADED).module
    comparison = compare(TASK, Subject.of(LOADED.model), Subject.of(emitted), TASK.eval_batch(20, "test"),
                         batch_sizes=BATCH_SIZES, repeats=2, warmup=0)
    return comparison, emitted


def test_the_emitted_graph_counts_fewer_flops(measured: tuple[Comparison, torch.nn.Module]):
    comparison, _ = measured
    assert 0 < comparison.emitted.flops < comparison.dense.flops
    assert comparison.ideal_speedup == comparison.dense.flops / comparison.emitted.flops > 1


def test_accuracy_is_that_of_the_argmax_answers(measured: tuple[Comparison, torch.nn.Module]):
    comparison, emitted = measured
    batch = TASK.eval_batch(20, "test")
    with torch.no_grad():
        answers = emitted(*batch.args).argmax(-1)
    assert comparison.emitted.accuracy == accuracy_per_family(answers, Batch(*batch.args, batch.targets, batch.family))
    assert comparison.examples == 20


def test_efficiency_is_measured_over_ideal_speedup(measured: tuple[Comparison, torch.nn.Module]):
    comparison, _ = measured
    data = comparison.to_json()
    assert comparison.batch_sizes == list(BATCH_SIZES)
    for size in BATCH_SIZES:
        speedup = data["dense"]["latency_seconds"][str(size)] / data["emitted"]["latency_seconds"][str(size)]
        assert data["speedup"][str(size)] == pytest.approx(speedup)
        assert data["efficiency"][str(size)] == pytest.approx(speedup / data["ideal_speedup"])


def test_the_markdown_has_the_summary_and_the_families(measured: tuple[Comparison, torch.nn.Module]):
    text = comparison_markdown(measured[0], "fastv")
    assert text.startswith("# fastv\n")
    assert "| GFLOPs / example |" in text and "| latency ms, B=4 |" in text and "| count |" in text


def test_timing_needs_enough_examples():
    batch = TASK.eval_batch(2, "test")
    with pytest.raises(ValueError, match="batch size 4"):
        compare(TASK, Subject.of(torch.nn.Identity()), Subject.of(torch.nn.Identity()), batch, batch_sizes=(1, 4))
