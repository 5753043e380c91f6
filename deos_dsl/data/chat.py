"""A vision-language model's encoding of a user dataset, through its own processor.

Each example's prompt goes through the processor's chat template (one user turn: its images,
then its text; the generation prompt added), or `DEFAULT_TEMPLATE` when the processor has none;
the answer, when given, follows after one space and is teacher-forced. The processor expands
each image placeholder into the model's image tokens; every example's image tokens are found
from the processor's image token (never assumed) and must be one contiguous run starting at the
same position in every example (the sites of a space act on one span per batch). Batches are
padded on the right to the dataset's longest example, so a search sees one sequence length.

A first pass over the whole dataset, when the encoder is made, tokenizes every example and
reports every unusable one (no image token after templating, an answer that tokenizes to
nothing or changes how the prompt tokenizes, image tokens elsewhere) as a `DataError` naming
its line, before any compute.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from deos_dsl.errors import DataError

from .encoded import IGNORE, Encoded
from .examples import HINT, MAX_REPORTED, Example

DEFAULT_TEMPLATE = "USER: {images}\n{prompt} ASSISTANT:"
PRELUDE_ROWS = 16  # examples per call of a model's prelude (its vision tower runs on them at once)
PROCESSOR_HINT = "load the model with its processor (a `save_pretrained` directory holding the tokenizer and image processor)"


@dataclass(frozen=True)
class Row:
    """One example, tokenized: its ids (prompt, then answer), prompt length and image span."""

    ids: list[int]
    prompt: int
    span: tuple[int, int]

    @property
    def answered(self) -> bool:
        return len(self.ids) > self.prompt


def load_image(image: Path | Image.Image) -> Image.Image:
    return image.convert("RGB") if isinstance(image, Image.Image) else Image.open(image).convert("RGB")


class ChatEncoder:
    """Batches of a processor's model (`kwargs` = what the processor returns: input_ids,
    attention_mask, pixel_values, ...; targets = next-token ids) from `examples`."""

    def __init__(self, processor: Any, examples: list[Example], length: int | None = None,
                 families: tuple[str, ...] | None = None,
                 prelude: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        """`length`: pad every batch to this many tokens (default: the longest example; an
        example longer than it is refused); `families`: the family names, in order (default:
        those of `examples`, sorted); `prelude`: maps the processor's output to the model's
        inputs (a model split at its language model, `LoadedModel.prelude`), `PRELUDE_ROWS`
        examples at a time."""
        tokenizer, image_token = getattr(processor, "tokenizer", None), getattr(processor, "image_token", None)
        if tokenizer is None or image_token is None:
            raise DataError(f"the model's processor ({type(processor).__name__}) has no tokenizer or no image token",
                            PROCESSOR_HINT)
        tokenizer.padding_side = "right"
        self.processor, self.image_token, self.prelude = processor, image_token, prelude
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.examples = examples
        self.rows, problems = [], []
        for example in examples:
            try:
                self.rows.append(self._row(example))
            except ValueError as error:
                problems.append(f"{example.where}: {error}")
        spans = {row.span for row in self.rows}
        if not problems and len(spans) > 1:
            first = self.rows[0].span
            problems = [f"{ex.where}: the image tokens sit at {row.span[0]}..{row.span[1]}, those of "
                        f"{examples[0].where} at {first[0]}..{first[1]}" for ex, row in zip(examples, self.rows)
                        if row.span != first]
        if not problems and length is not None:
            problems = [f"{ex.where}: {len(row.ids)} tokens, more than the {length} every batch is padded to"
                        for ex, row in zip(examples, self.rows) if len(row.ids) > length]
        if problems:
            sizes = {row.span[1] - row.span[0] for row in self.rows}
            raise DataError(f"{len(problems)} example(s) the model's processor cannot take:\n"
                            + "\n".join(f"  {p}" for p in problems[:MAX_REPORTED]),
                            ("resize every image to one size: this model gives each image size its own number of "
                             "image tokens, and a space's sites act on one span; " if len(sizes) > 1 else "")
                            + "put the images at the start of every prompt (the template does), one run of image tokens "
                            "at the same place in every example; " + HINT)
        self.length = length or max(len(row.ids) for row in self.rows)
        self.families = families or tuple(sorted({ex.family for ex in examples if ex.family is not None}))

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def span(self) -> tuple[int, int]:
        """Where every example's image tokens sit."""
        return self.rows[0].span

    def prompt_text(self, example: Example) -> str:
        """The templated prompt of `example` (its images' placeholders first)."""
        if getattr(self.processor, "chat_template", None):
            content = [{"type": "image"} for _ in example.images] + [{"type": "text", "text": example.prompt}]
            return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                      tokenize=False)
        return DEFAULT_TEMPLATE.format(images=self.image_token * len(example.images), prompt=example.prompt)

    def text(self, example: Example) -> str:
        """What the model reads: the templated prompt, then the answer when there is one."""
        prompt = self.prompt_text(example)
        return prompt if example.answer is None else f"{prompt} {example.answer}"

    def _ids(self, text: str, images: list[Image.Image]) -> list[int]:
        return self.processor(text=[text], images=images, return_tensors="pt")["input_ids"][0].tolist()

    def _row(self, example: Example) -> Row:
        images = [load_image(image) for image in example.images]
        try:
            prompt = self._ids(self.prompt_text(example), images)
            ids = prompt if example.answer is None else self._ids(self.text(example), images)
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"the processor refuses it: {type(error).__name__}: {str(error).splitlines()[0]}") from None
        if ids[:len(prompt)] != prompt:
            raise ValueError("the answer changes how the prompt tokenizes (write the answer as its own words)")
        if example.answer is not None and len(ids) == len(prompt):
            raise ValueError(f"the answer `{example.answer}` tokenizes to nothing")
        where = [i for i, token in enumerate(prompt) if token == self.image_token_id]
        if not where:
            raise ValueError(f"no image token `{self.image_token}` in the prompt after templating")
        if where != list(range(where[0], where[-1] + 1)):
            raise ValueError("the image tokens are not one contiguous run (text between images)")
        return Row(ids, len(prompt), (where[0], where[-1] + 1))

    def _inputs(self, chosen: list[Example]) -> dict[str, torch.Tensor]:
        """The model's inputs for `chosen`: the processor's tensors (through the prelude)."""
        images = [load_image(image) for ex in chosen for image in ex.images]
        encoded = self.processor(text=[self.text(ex) for ex in chosen], images=images, padding="max_length",
                                 max_length=self.length, return_tensors="pt")
        kwargs = {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}
        return kwargs if self.prelude is None else self.prelude(kwargs)

    def batch(self, indices: list[int]) -> Encoded:
        """Examples `indices`, right-padded to the dataset's longest example."""
        chosen = [self.examples[i] for i in indices]
        step = PRELUDE_ROWS if self.prelude is not None else max(len(chosen), 1)
        parts = [self._inputs(chosen[lo:lo + step]) for lo in range(0, len(chosen), step)]
        kwargs = parts[0] if len(parts) == 1 else {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        targets = torch.full((len(chosen), self.length), IGNORE, dtype=torch.long)
        positions = torch.zeros(len(chosen), self.length, dtype=torch.bool)
        for b, row in enumerate(self.rows[i] for i in indices):
            assert kwargs["input_ids"][b, :len(row.ids)].tolist() == row.ids, "a batch tokenizes as the first pass did"
            if row.answered:  # the logits at t predict the token at t + 1
                targets[b, row.prompt - 1:len(row.ids) - 1] = torch.tensor(row.ids[row.prompt:])
                positions[b, row.prompt - 1:len(row.ids) - 1] = True
            else:
                positions[b, row.prompt - 1] = True
        family = torch.tensor([self.families.index(ex.family) if ex.family is not None else -1 for ex in chosen])
        return Encoded((), kwargs, targets, family, positions, self.families)


def prompt_batches(processor: Any, examples: list[Example], sizes: list[int]) -> dict[int, dict[str, torch.Tensor]]:
    """For each `B` in `sizes`: the processor's inputs for the first `B` of `examples` as prompts
    (their answers dropped), right-padded to the longest of them."""
    encoder = ChatEncoder(processor, [replace(example, answer=None) for example in examples[:max(sizes)]])
    return {size: encoder.batch(list(range(size))).kwargs for size in sizes}
