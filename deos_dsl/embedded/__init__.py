"""The embedded defaults: a procedural VQA benchmark, the shipped HF LLaVA that answers it by
generating the answer word (`llava.py`, a `save_pretrained` folder at `LLAVA_DIRECTORY`; deos
name `embedded:llava`), and the small hand-written LLaVA-style classifier that keeps the test
suite fast (`model.py`; deos name `embedded`).

>>> from deos_dsl.embedded import load_default_model, fixed_eval_batch, evaluate
>>> model = load_default_model()            # eval mode, frozen, float32
>>> model.visual_span, model.vision_grid    # (0, 144), (12, 12)
>>> evaluate(model, fixed_eval_batch())     # accuracy per question family (percent)
"""

from .evaluate import accuracy_per_family, evaluate, majority_baseline, predict
from .loading import LLAVA_DIRECTORY, default_weights_path, load_default_model, load_model
from .model import EmbeddedVQAModel, ModelConfig
from .vqa import ANSWERS, FAMILIES, QUESTION_WORDS, Batch, VQADataset, fixed_eval_batch, make_example

__all__ = [
    "ANSWERS", "FAMILIES", "LLAVA_DIRECTORY", "QUESTION_WORDS", "Batch", "EmbeddedVQAModel", "ModelConfig",
    "VQADataset", "accuracy_per_family", "default_weights_path", "evaluate",
    "fixed_eval_batch", "load_default_model", "load_model", "majority_baseline",
    "make_example", "predict",
]
