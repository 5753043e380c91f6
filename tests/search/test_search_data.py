"""The `--data` spec: parsing, batches that depend on the step alone, sharding over ranks,
`[:N]` cycling, and the model check (shapes-VQA inputs and answers)."""

from __future__ import annotations

import pytest
import torch

from deos_dsl.compiler.models import resolve_model
from deos_dsl.errors import SearchError
from deos_dsl.search.data import DataSpec, check_model, parse_data


def test_specs_parse_and_bad_ones_are_clear_errors():
    assert parse_data("embedded") == DataSpec("embedded", None)
    assert parse_data("embedded:shapes_vqa") == DataSpec("embedded:shapes_vqa", None)
    assert parse_data("embedded:shapes_vqa[:64]").limit == 64
    for bad in ("cifar", "embedded:shapes", "embedded:shapes_vqa[:0]", "embedded:shapes_vqa[1:4]"):
        with pytest.raises(SearchError):
            parse_data(bad)


def test_rank_shards_concatenate_to_the_global_batch():
    spec = parse_data("embedded")
    whole = spec.train_batch(3, 8)
    shards = [spec.train_batch(3, 8, rank, 2) for rank in range(2)]
    assert torch.equal(torch.cat([s.question for s in shards]), whole.question)
    assert torch.equal(torch.cat([s.pixels for s in shards]), whole.pixels)
    assert not torch.equal(spec.train_batch(4, 8).question, whole.question)  # a new step, new examples


def test_a_limited_spec_cycles_through_its_first_n_examples():
    spec = parse_data("embedded:shapes_vqa[:6]")
    batch = spec.train_batch(1, 4)  # global examples 4..7 -> 4, 5, 0, 1
    first = spec.train_batch(0, 4)  # 0..3
    assert torch.equal(batch.question[2:], first.question[:2])
    assert torch.equal(batch.answer[2:], first.answer[:2])


def test_models_that_do_not_answer_shapes_vqa_are_refused():
    spec = parse_data("embedded")
    check_model(spec, resolve_model("embedded"))
    with pytest.raises(SearchError, match="does not take shapes-VQA inputs"):
        check_model(spec, resolve_model("hf:Qwen2Model"))
