"""The `--data` specs of the shipped benchmark as tasks: parsing, batches that depend on the step
alone, sharding over ranks, `[:N]` cycling, `{FAMILY,...}` selection, and the model check
(shapes-VQA inputs and answers)."""

from __future__ import annotations

import pytest
import torch

from deos_dsl.compiler.models import resolve_model
from deos_dsl.errors import DataError
from deos_dsl.embedded.vqa import FAMILIES, fixed_eval_batch
from deos_dsl.tasks import ClassifierTask, make_task

EMBEDDED = resolve_model("embedded")


def test_specs_make_tasks_and_bad_ones_are_clear_errors():
    for spec in ("embedded", "embedded:shapes_vqa", "embedded:shapes_vqa[:64]"):
        assert isinstance(make_task(spec, EMBEDDED), ClassifierTask)
    assert len(make_task("embedded:shapes_vqa[:64]", EMBEDDED).source) == 64
    for bad in ("cifar", "embedded:shapes", "embedded:shapes_vqa[:0]", "embedded:shapes_vqa[1:4]"):
        with pytest.raises(DataError):
            make_task(bad, EMBEDDED)


def test_rank_shards_concatenate_to_the_global_batch():
    task = make_task("embedded", EMBEDDED)
    whole = task.train_batch(3, 8)
    shards = [task.train_batch(3, 8, rank, 2) for rank in range(2)]
    for index in range(2):
        assert torch.equal(torch.cat([s.args[index] for s in shards]), whole.args[index])
    assert not torch.equal(task.train_batch(4, 8).args[1], whole.args[1])  # a new step, new examples


def test_a_limited_spec_cycles_through_its_first_n_examples():
    task = make_task("embedded:shapes_vqa[:6]", EMBEDDED)
    batch = task.train_batch(1, 4)  # global examples 4..7 -> 4, 5, 0, 1
    first = task.train_batch(0, 4)  # 0..3
    assert torch.equal(batch.args[1][2:], first.args[1][:2])
    assert torch.equal(batch.targets[2:], first.targets[:2])


def test_a_family_spec_reads_exactly_those_examples_of_the_benchmark_in_order():
    whole = make_task("embedded", EMBEDDED).eval_batch(40, "test")
    chosen = (FAMILIES.index("count"), FAMILIES.index("compare"))
    mine = whole.rows(0, 40).family.tolist()
    wanted = [i for i, family in enumerate(mine) if family in chosen]  # an independent selection
    task = make_task("embedded{compare, count}", EMBEDDED)
    batch = task.eval_batch(len(wanted), "test")
    assert batch.family.tolist() == [mine[i] for i in wanted]
    assert torch.equal(batch.args[0], whole.args[0][wanted]) and torch.equal(batch.targets, whole.targets[wanted])
    train = make_task("embedded", EMBEDDED).train_batch(0, 40)
    ours = task.train_batch(0, len(wanted))
    assert torch.equal(ours.args[1], train.args[1][wanted])
    limited = make_task("embedded:shapes_vqa{exist}[:3]", EMBEDDED)
    assert torch.equal(limited.train_batch(1, 3).args[1], limited.train_batch(0, 3).args[1])  # cycles through 3
    assert set(limited.train_batch(0, 3).family.tolist()) == {FAMILIES.index("exist")}
    assert set(task.accuracy(torch.ones(len(batch), dtype=torch.bool), batch)) == {"count", "compare", "overall"}
    assert torch.equal(make_task("embedded", EMBEDDED).eval_batch(7, "val").targets, fixed_eval_batch("val", 7).answer)


@pytest.mark.parametrize(("spec", "message", "hint"), [
    ("embedded{}", "no question family", "list some of count, attribute"),
    ("embedded{count,colour}", "unknown question family `colour`", "list some of count, attribute"),
    ("embedded{count}[:0]", "selects no example", "must be positive")])
def test_bad_family_specs_name_the_problem(spec: str, message: str, hint: str):
    with pytest.raises(DataError, match=message) as error:
        make_task(spec, EMBEDDED)
    assert hint in (error.value.hint or "")


def test_models_that_do_not_answer_shapes_vqa_are_refused():
    with pytest.raises(DataError, match="does not take shapes-VQA inputs"):
        make_task("embedded", resolve_model("hf:Qwen2Model"))


def test_the_shipped_task_scores_the_answers():
    task = make_task("embedded", EMBEDDED)
    batch = task.eval_batch(64, "val")
    logits = EMBEDDED.model(*batch.args)
    correct = task.correct(logits, batch)
    assert correct.dtype == torch.bool and correct.shape == (64,)
    accuracy = task.accuracy(correct, batch)
    assert accuracy["overall"] == pytest.approx(100 * correct.float().mean().item())
    assert set(accuracy) <= {*task.families, "overall"}
    loss = task.loss(logits, batch, "cross_entropy", None)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, batch.targets).item())
    assert task.loss(logits, batch, "kl", logits).item() == pytest.approx(0.0, abs=1e-6)
