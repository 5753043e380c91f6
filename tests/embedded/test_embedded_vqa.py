"""The procedural VQA benchmark: determinism, split disjointness, vocabulary, balance."""

from collections import Counter

import numpy as np
import pytest
import torch

from deos_dsl.embedded import vqa


def test_examples_and_images_are_deterministic():
    for split in vqa.SPLITS:
        for i in (0, 7, 123):
            a, b = vqa.make_example(split, i), vqa.make_example(split, i)
            assert a == b
            np.testing.assert_array_equal(vqa.render(a), vqa.render(b))


def test_seed_and_index_change_the_example():
    base = vqa.make_example("train", 3, seed=0)
    assert vqa.make_example("train", 3, seed=1).objects != base.objects
    assert vqa.make_example("train", 8, seed=0).objects != base.objects


def test_dataset_items_match_examples():
    ds = vqa.VQADataset("val", 10, seed=0)
    pixels, question, answer, family = ds[4]
    ex = vqa.make_example("val", 4, seed=0)
    assert pixels.shape == (3, vqa.IMAGE_SIZE, vqa.IMAGE_SIZE) and pixels.dtype == torch.float32
    assert question.tolist() == vqa.encode_question(ex.question)
    assert vqa.ANSWERS[answer] == ex.answer and vqa.FAMILIES[family] == ex.family
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(ValueError):
        vqa.VQADataset("dev", 10)


def test_splits_are_disjoint_by_scene_layout():
    layouts = {}
    for split in vqa.SPLITS:
        exs = [vqa.make_example(split, i) for i in range(300)]
        assert all(vqa.layout_bucket(e.objects) in vqa.SPLIT_BUCKETS[split] for e in exs)
        layouts[split] = {tuple(sorted(e.objects, key=lambda o: (o.row, o.col))) for e in exs}
    assert not layouts["train"] & layouts["val"]
    assert not layouts["train"] & layouts["test"]
    assert not layouts["val"] & layouts["test"]


def test_questions_fit_template_and_vocabulary():
    for i in range(200):
        ex = vqa.make_example("train", i)
        ids = vqa.encode_question(ex.question)
        assert len(ids) == vqa.QUESTION_LEN
        assert ids[-1] == vqa.WORD_INDEX["?"]
        assert ex.answer in vqa.ANSWERS
        assert ex.family == vqa.FAMILIES[i % len(vqa.FAMILIES)]
        assert 3 <= len(ex.objects) <= 8
        assert len({(o.row, o.col) for o in ex.objects}) == len(ex.objects)


def test_answers_are_balanced_and_grounded_in_the_scene():
    answers = {f: Counter() for f in vqa.FAMILIES}
    for i in range(1000):
        ex = vqa.make_example("train", i)
        answers[ex.family][ex.answer] += 1
        if ex.family == "attribute":  # "what colour is the object at row r column c ?"
            row, col = int(ex.question[7]) - 1, int(ex.question[9]) - 1
            (obj,) = [o for o in ex.objects if (o.row, o.col) == (row, col)]
            assert getattr(obj, ex.question[1]) == ex.answer
    assert set(answers["count"]) == {str(n) for n in range(vqa.MAX_COUNT + 1)}
    for family, counts in answers.items():
        assert max(counts.values()) / sum(counts.values()) < 0.6, (family, counts)


def test_small_objects_cover_about_one_patch():
    ex = next(e for e in (vqa.make_example("train", i) for i in range(50))
              if any(o.size == "small" for o in e.objects))
    obj = next(o for o in ex.objects if o.size == "small")
    img = vqa.render(ex)
    y0, x0 = obj.row * vqa.CELL + obj.dy, obj.col * vqa.CELL + obj.dx
    colour = np.asarray(vqa.RGB[obj.colour])[:, None, None]
    close = np.abs(img - colour).max(axis=0) < 0.15
    cell = close[obj.row * vqa.CELL:(obj.row + 1) * vqa.CELL, obj.col * vqa.CELL:(obj.col + 1) * vqa.CELL]
    assert 20 <= cell.sum() <= 64
    assert close[y0:y0 + 8, x0:x0 + 8].sum() == cell.sum()


def test_auxiliary_targets_mark_object_centres_and_count_classes():
    ex = vqa.make_example("train", 0)
    labels = vqa.patch_labels(ex).reshape(12, 12)
    centres = sorted(int(c) for c in labels.flatten() if 0 < c <= vqa.N_OBJECT_CLASSES)
    assert centres == sorted(vqa.object_class(o) for o in ex.objects)
    for o in ex.objects:
        y0, x0, mask = vqa.object_placement(o)
        cy, cx = (y0 + mask.shape[0] // 2) // 8, (x0 + mask.shape[1] // 2) // 8
        assert labels[cy, cx] == vqa.object_class(o)
    assert (labels == vqa.PART_CLASS).sum() > 0
    hist = vqa.class_histogram(ex)
    assert hist.sum() == len(ex.objects)
    assert all(hist[vqa.object_class(o) - 1] >= 1 for o in ex.objects)


def test_relevant_objects_are_the_ones_the_question_names():
    for i in range(100):
        ex = vqa.make_example("test", i)
        named = [ex.objects[j] for j in ex.relevant]
        rel = vqa.relevance_map(ex)
        assert rel.sum() == len(set(vqa.centre_patch(o) for o in named))
        if ex.family == "count":
            assert len(named) == int(ex.answer)
        elif ex.family == "relation":
            assert [(o.colour, o.shape) for o in named] == [ex.question[2:4], ex.question[-3:-1]]
        elif ex.family == "exist" and ex.answer == "yes":
            assert all((o.size, o.colour, o.shape) == ex.question[3:6] for o in named)
        else:
            assert named
