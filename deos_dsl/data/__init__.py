"""deos_dsl.data: user datasets (JSONL of images, prompts and answers), checked whole before any
compute, and their encodings into model batches: through a vision-language model's processor
(`chat`), or the shipped model's own encoding (`vqa_json`); the shipped benchmark written out as
such a dataset (`export`).
"""

from .chat import DEFAULT_TEMPLATE, ChatEncoder, prompt_batches
from .encoded import IGNORE, Encoded, concat
from .examples import Example, read_jsonl
from .export import export_embedded, shapes_vqa_example
from .vqa_json import VQAEncoder

__all__ = ["DEFAULT_TEMPLATE", "IGNORE", "ChatEncoder", "Encoded", "Example", "VQAEncoder", "concat", "export_embedded",
           "prompt_batches", "read_jsonl", "shapes_vqa_example"]
