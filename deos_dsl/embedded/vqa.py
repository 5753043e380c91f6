"""Procedural visual question answering benchmark ("shapes VQA").

A scene is a 96x96 RGB image: up to eight objects (3 shapes x 4 colours x 2 sizes) placed in
the cells of a 4x4 layout grid with a random offset, on a noisy background with grey clutter
specks.  SMALL objects are 8 px wide, i.e. about one 8x8 patch of the model's 12x12 patch
grid, so dropping visual tokens really loses them.

Every example is generated deterministically from ``(seed, split, index)``.  Splits are
disjoint by construction: a scene layout belongs to exactly one split, decided by a hash of
its contents (train 80%, validation 10%, test 10% of the layout space); a generator for one
split rejects layouts that hash into another.

Question families (the family of example ``i`` is ``FAMILIES[i % 5]``):
  count       "how many red objects ?" / "how many circles ?" / "how many small objects ?"
  attribute   "what colour is the object at row 2 column 3 ?" (or "what shape ...")
  exist       "is there a small red triangle ?" (negatives differ from a real object in one
              attribute, often only its size)
  relation    "is the red circle left of the blue square ?" (left/right/above/below)
  compare     "are there more red than blue objects ?" / "are there more circles than squares ?"
Answers are balanced: counts are uniform over 0..4 by construction, yes/no are 50/50.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

IMAGE_SIZE = 96
LAYOUT = 4  # scene objects sit in the cells of a LAYOUT x LAYOUT grid
CELL = IMAGE_SIZE // LAYOUT
SHAPES = ("circle", "square", "triangle")
SHAPE_PLURALS = ("circles", "squares", "triangles")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
SIZE_PX = {"small": 8, "large": 18}
RGB = {
    "red": (0.9, 0.15, 0.15),
    "green": (0.15, 0.8, 0.2),
    "blue": (0.2, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
}
BACKGROUND = 0.12
MAX_COUNT = 4
MAX_OBJECTS = 8  # objects in a scene: at least 3
FAMILIES = ("count", "attribute", "exist", "relation", "compare")
SPLITS = ("train", "val", "test")
SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}
QUESTION_LEN = 12  # questions are left-padded to this many tokens; the last token is "?"

PAD = "<pad>"
QUESTION_WORDS = (
    (PAD, "?", "how", "many", "objects", "what", "colour", "shape", "is", "the", "object", "at",
     "row", "column", "there", "a", "left", "right", "of", "above", "below", "are", "more",
     "than", "1", "2", "3", "4")
    + SHAPES + SHAPE_PLURALS + COLOURS + SIZES
)
ANSWERS = ("no", "yes") + tuple(str(n) for n in range(MAX_COUNT + 1)) + COLOURS + SHAPES
WORD_INDEX = {w: i for i, w in enumerate(QUESTION_WORDS)}
ANSWER_INDEX = {a: i for i, a in enumerate(ANSWERS)}
SPLIT_CODE = {s: i for i, s in enumerate(SPLITS)}


@dataclass(frozen=True)
class SceneObject:
    """One object: layout cell (row, col), attributes and pixel offset inside the cell."""

    row: int
    col: int
    shape: str
    colour: str
    size: str
    dy: int
    dx: int

    def has(self, kind: str, value: str) -> bool:
        """Whether attribute ``kind`` ("shape" | "colour" | "size") equals ``value``."""
        return getattr(self, kind) == value


@dataclass(frozen=True)
class Example:
    """One benchmark item: the scene, its question words, the answer, the family and the
    objects the question refers to (empty for a count of zero)."""

    objects: tuple[SceneObject, ...]
    question: tuple[str, ...]
    answer: str
    family: str
    clutter_seed: int
    relevant: tuple[int, ...] = ()  # indices of the objects the question is about


def layout_bucket(objects: tuple[SceneObject, ...]) -> int:
    """Hash bucket 0..9 of a scene layout; decides the split the layout belongs to."""
    digest = hashlib.blake2b(repr(sorted(objects, key=lambda o: (o.row, o.col))).encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "little") % 10


def _random_object(rng: np.random.Generator, row: int, col: int, **fixed: str) -> SceneObject:
    attrs = {
        "shape": str(rng.choice(SHAPES)),
        "colour": str(rng.choice(COLOURS)),
        "size": str(rng.choice(SIZES)),
    }
    attrs.update(fixed)
    slack = CELL - SIZE_PX[attrs["size"]] - 2
    dy, dx = (int(v) for v in rng.integers(1, slack + 1, size=2))
    return SceneObject(row, col, attrs["shape"], attrs["colour"], attrs["size"], dy, dx)


def _other_value(rng: np.random.Generator, kind: str, value: str) -> str:
    values = {"shape": SHAPES, "colour": COLOURS, "size": SIZES}[kind]
    return str(rng.choice([v for v in values if v != value]))


def _scene(rng: np.random.Generator, kind: str, value: str, count: int) -> tuple[SceneObject, ...]:
    """A random scene with exactly ``count`` objects whose ``kind`` attribute is ``value``."""
    n = int(rng.integers(max(count, 3), MAX_OBJECTS + 1))
    cells = rng.permutation(LAYOUT * LAYOUT)[:n]
    objects = []
    for i, cell in enumerate(cells):
        forced = value if i < count else _other_value(rng, kind, value)
        objects.append(_random_object(rng, int(cell) // LAYOUT, int(cell) % LAYOUT, **{kind: forced}))
    return tuple(objects)


def _count_of(objects: tuple[SceneObject, ...], kind: str, value: str) -> int:
    return sum(o.has(kind, value) for o in objects)


def _attribute_words(kind: str, value: str) -> tuple[str, ...]:
    """Noun phrase for a set of objects: "red objects", "circles", "small objects"."""
    return (SHAPE_PLURALS[SHAPES.index(value)],) if kind == "shape" else (value, "objects")


def _ask_count(rng: np.random.Generator, objects, kind: str, value: str):
    relevant = tuple(o for o in objects if o.has(kind, value))
    return ("how", "many") + _attribute_words(kind, value), str(len(relevant)), relevant


def _ask_attribute(rng: np.random.Generator, objects, kind: str, value: str):
    obj = objects[int(rng.integers(len(objects)))]
    asked = str(rng.choice(("colour", "shape")))
    words = ("what", asked, "is", "the", "object", "at", "row", str(obj.row + 1), "column",
             str(obj.col + 1))
    return words, getattr(obj, asked), (obj,)


def _ask_exist(rng: np.random.Generator, objects, kind: str, value: str):
    obj = objects[int(rng.integers(len(objects)))]
    target = (obj.size, obj.colour, obj.shape)
    present = {(o.size, o.colour, o.shape) for o in objects}
    if rng.random() < 0.5:
        # near miss: change one attribute (size half of the time) of a real object
        changed = "size" if rng.random() < 0.5 else str(rng.choice(("colour", "shape")))
        idx = ("size", "colour", "shape").index(changed)
        for alt in rng.permutation({"size": SIZES, "colour": COLOURS, "shape": SHAPES}[changed]):
            cand = target[:idx] + (str(alt),) + target[idx + 1:]
            if cand not in present:
                target = cand
                break
    matches = tuple(o for o in objects if (o.size, o.colour, o.shape) == target)
    return ("is", "there", "a") + target, "yes" if matches else "no", matches or (obj,)


_RELATIONS = {"left": (1, -1), "right": (1, 1), "above": (0, -1), "below": (0, 1)}


def _ask_relation(rng: np.random.Generator, objects, kind: str, value: str):
    keys = [(o.colour, o.shape) for o in objects]
    unique = [o for o, k in zip(objects, keys) if keys.count(k) == 1]
    pairs = [(a, b) for a in unique for b in unique if a is not b and (a.row != b.row or a.col != b.col)]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    axes = [ax for ax, d in ((0, b.row - a.row), (1, b.col - a.col)) if d != 0]
    axis = axes[int(rng.integers(len(axes)))]
    candidates = [r for r, (ax, _) in _RELATIONS.items() if ax == axis]
    rel = candidates[int(rng.integers(2))]
    ax, sign = _RELATIONS[rel]
    delta = (a.row - b.row, a.col - b.col)[ax]
    words = ("is", "the", a.colour, a.shape, rel) + (("of",) if ax == 1 else ()) + ("the", b.colour, b.shape)
    return words, "yes" if delta * sign > 0 else "no", (a, b)


def _ask_compare(rng: np.random.Generator, objects, kind: str, value: str):
    values = COLOURS if rng.random() < 0.6 else SHAPES
    kind = "colour" if values is COLOURS else "shape"
    pairs = [(a, b) for a in values for b in values
             if a != b and _count_of(objects, kind, a) != _count_of(objects, kind, b)]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    if kind == "colour":
        words = ("are", "there", "more", a, "than", b, "objects")
    else:
        words = ("are", "there", "more", SHAPE_PLURALS[SHAPES.index(a)], "than",
                 SHAPE_PLURALS[SHAPES.index(b)])
    relevant = tuple(o for o in objects if o.has(kind, a) or o.has(kind, b))
    return words, "yes" if _count_of(objects, kind, a) > _count_of(objects, kind, b) else "no", relevant


_ASK = {"count": _ask_count, "attribute": _ask_attribute, "exist": _ask_exist,
        "relation": _ask_relation, "compare": _ask_compare}


def family_indices(positions: list[int], families: tuple[str, ...] | None) -> list[int]:
    """The example indices of `positions` counted among the examples of `families` only (all of
    them: None, the indices unchanged). `make_example` gives index i the family
    `FAMILIES[i % 5]`, so position k is cycle k // len(families), slot k % len(families)."""
    if families is None:
        return list(positions)
    slots = sorted(FAMILIES.index(name) for name in families)
    return [cycle * len(FAMILIES) + slots[slot] for cycle, slot in (divmod(k, len(slots)) for k in positions)]


def make_example(split: str, index: int, seed: int = 0) -> Example:
    """The deterministic example ``index`` of ``split`` (family ``FAMILIES[index % 5]``)."""
    family = FAMILIES[index % len(FAMILIES)]
    rng = np.random.default_rng([seed, SPLIT_CODE[split], index])
    buckets = SPLIT_BUCKETS[split]
    while True:
        kind = str(rng.choice(("colour", "shape", "size")))
        value = str(rng.choice({"colour": COLOURS, "shape": SHAPES, "size": SIZES}[kind]))
        if kind == "size":
            value = "small"
        count = int(rng.integers(MAX_COUNT + 1))
        objects = _scene(rng, kind, value, count)
        if layout_bucket(objects) not in buckets:
            continue
        asked = _ASK[family](rng, objects, kind, value)
        if asked is None:
            continue
        words, answer, relevant = asked
        return Example(objects, words + ("?",), answer, family, int(rng.integers(2**31)),
                       tuple(objects.index(o) for o in relevant))


@lru_cache(maxsize=None)
def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean ``[size, size]`` mask of a shape."""
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= (size / 2) ** 2
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    return np.abs(xx - c) <= (yy + 0.5) / 2  # triangle, apex up


def object_placement(o: SceneObject) -> tuple[int, int, np.ndarray]:
    """Top-left pixel ``(y0, x0)`` and boolean mask of an object."""
    return o.row * CELL + o.dy, o.col * CELL + o.dx, _shape_mask(o.shape, SIZE_PX[o.size])


def object_class(o: SceneObject) -> int:
    """Class id 1..24 of an object's (colour, shape, size); 0 means "no object"."""
    return 1 + (COLOURS.index(o.colour) * len(SHAPES) + SHAPES.index(o.shape)) * len(SIZES) + SIZES.index(o.size)


N_OBJECT_CLASSES = len(COLOURS) * len(SHAPES) * len(SIZES)
PART_CLASS = N_OBJECT_CLASSES + 1  # patch label of an object's patches other than its centre


def patch_labels(example: Example, patch: int = 8, min_pixels: int = 6) -> np.ndarray:
    """Per-patch labels ``[(96 / patch) ** 2]`` int64 (row-major): the object's class at the patch
    holding its centre, ``PART_CLASS`` where it covers at least ``min_pixels`` of another patch,
    else 0.  Dense auxiliary targets for training the encoder."""
    grid = IMAGE_SIZE // patch
    labels = np.zeros(grid * grid, dtype=np.int64)
    for o in example.objects:
        y0, x0, mask = object_placement(o)
        canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.int64)
        canvas[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = mask
        covered = canvas.reshape(grid, patch, grid, patch).sum(axis=(1, 3)).reshape(-1)
        labels[covered >= min_pixels] = PART_CLASS
        labels[centre_patch(o, patch)] = object_class(o)
    return labels


def centre_patch(o: SceneObject, patch: int = 8) -> int:
    """Row-major index of the patch holding an object's centre."""
    y0, x0, mask = object_placement(o)
    return (y0 + mask.shape[0] // 2) // patch * (IMAGE_SIZE // patch) + (x0 + mask.shape[1] // 2) // patch


def relevance_map(example: Example, patch: int = 8) -> np.ndarray:
    """``[(96 / patch) ** 2]`` float32: 1 at the centre patches of the objects the question is about."""
    relevant = np.zeros((IMAGE_SIZE // patch) ** 2, dtype=np.float32)
    for i in example.relevant:
        relevant[centre_patch(example.objects[i], patch)] = 1.0
    return relevant


def class_histogram(example: Example) -> np.ndarray:
    """Number of objects of each class 1..24, ``[24]`` float32."""
    counts = np.zeros(N_OBJECT_CLASSES, dtype=np.float32)
    for o in example.objects:
        counts[object_class(o) - 1] += 1
    return counts


def render(example: Example) -> np.ndarray:
    """RGB image ``[3, 96, 96]`` float32 in [0, 1]: objects, grey clutter specks, pixel noise."""
    rng = np.random.default_rng(example.clutter_seed)
    img = np.full((3, IMAGE_SIZE, IMAGE_SIZE), BACKGROUND, dtype=np.float32)
    for _ in range(int(rng.integers(4, 12))):  # clutter: dim grey 1-2 px specks
        y, x = rng.integers(0, IMAGE_SIZE - 2, size=2)
        s = int(rng.integers(1, 3))
        img[:, y:y + s, x:x + s] = rng.uniform(0.3, 0.5)
    for o in example.objects:
        y0, x0, mask = object_placement(o)
        region = img[:, y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
        region[:, mask] = np.asarray(RGB[o.colour], dtype=np.float32)[:, None]
    img += rng.normal(0.0, 0.03, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def encode_question(words: tuple[str, ...]) -> list[int]:
    """Token ids of a question, left-padded with PAD to ``QUESTION_LEN`` (last token is "?")."""
    ids = [WORD_INDEX[w] for w in words]
    if len(ids) > QUESTION_LEN:
        raise ValueError(f"question longer than {QUESTION_LEN} tokens: {' '.join(words)}")
    return [WORD_INDEX[PAD]] * (QUESTION_LEN - len(ids)) + ids


def example_tensors(ex: Example) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``(pixels [3,96,96], question ids [T], answer id, family id)`` of an example."""
    return (torch.from_numpy(render(ex)), torch.tensor(encode_question(ex.question)),
            ANSWER_INDEX[ex.answer], FAMILIES.index(ex.family))


@dataclass(frozen=True)
class Batch:
    """Tensors of a batch: pixels ``[B,3,96,96]``, question ``[B,T]``, answer ``[B]``, family ``[B]``."""

    pixels: torch.Tensor
    question: torch.Tensor
    answer: torch.Tensor
    family: torch.Tensor


class VQADataset(torch.utils.data.Dataset):
    """Indexable split of the benchmark: item ``i`` is ``(pixels, question, answer, family)``."""

    def __init__(self, split: str, size: int, seed: int = 0, start: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.split, self.size, self.seed, self.start = split, size, seed, start

    def __len__(self) -> int:
        return self.size

    def example(self, i: int) -> Example:
        """The symbolic example (scene + words) behind item ``i``."""
        if not 0 <= i < self.size:
            raise IndexError(i)
        return make_example(self.split, self.start + i, self.seed)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        return example_tensors(self.example(i))

    def batch(self, lo: int = 0, hi: int | None = None) -> Batch:
        """Items ``lo..hi`` stacked into one :class:`Batch`."""
        items = [self[i] for i in range(lo, self.size if hi is None else hi)]
        pixels, question, answer, family = zip(*items)
        return Batch(torch.stack(pixels), torch.stack(question), torch.tensor(answer),
                     torch.tensor(family))


def fixed_eval_batch(split: str = "test", size: int = 1000, seed: int = 0) -> Batch:
    """The fixed evaluation subset: the first ``size`` examples of ``split``."""
    return VQADataset(split, size, seed).batch()
