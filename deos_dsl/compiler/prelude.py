"""Split a vision-language model at its language model: the model's own code before it (the
PRELUDE) runs eagerly, the language model and its output layer are what deos traces.

Why: some families' whole forward cannot be exported. Qwen2-VL and Qwen2.5-VL run their vision
tower over the flattened patches of every image at once, attention cut per image (and per
window in Qwen2.5-VL) by lengths read from the input values (`image_grid_thw`), and compute
M-RoPE positions with Python loops over the ids; LLaVA-NeXT and Mistral3 lay their image tokens
out by image sizes read from the inputs; export stops on the first data-dependent size.
Everything the language model needs is a plain tensor once the prelude has run: the embeddings
with the image features scattered over the placeholders, the position ids, the padding mask.

- `SPLIT_FAMILIES` (`config.model_type`) is the table of families that take this route (one
  line per family: a new one touches this table, `tiny_models.py` and its test);
- `language_model_call(model, kwargs)` runs `model(**kwargs)` until its language model is
  called and returns that call's tensor arguments (a forward pre-hook stops the forward there:
  the language model itself never runs in the prelude);
- `LanguageHead(model)` is the traced module: `forward(input_ids, inputs_embeds, position_ids,
  attention_mask) -> logits [B, T, V]`; `input_ids` is not computed with (the embeddings
  already hold them) but tells the block map where the image tokens are;
- `Prelude(model)(kwargs)` maps the processor's inputs to `LanguageHead`'s, batch-first:
  `position_ids [R, B, T]` (M-RoPE's R axes) is handed over as `[B, T, R]`, so that every
  input splits by example rows and carries its tokens on axis 1 (what the sites gather).
Positions through a reduction: the rotary tables are computed once from these ids before the
first block, and every site gathers them with its kept index, so a kept token keeps its
original 3-D position and a merged token takes its destination's (docs/compiler.md).
`split_at_language_model` checks that the split computes the whole model's logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .errors import UntraceableModelError
from .trace import EAGER_TOLERANCE, language_model_of, relative_error

SPLIT_FAMILIES = {
    "qwen2_vl": "Qwen2-VL: vision tower over flattened patches cut by grid sizes read from the inputs, M-RoPE",
    "qwen2_5_vl": "Qwen2.5-VL: as Qwen2-VL, with windowed vision attention",
    "llava_next": "LLaVA-NeXT: any-resolution tiles and newline tokens laid out by the image sizes read from the inputs",
    "mistral3": "Mistral3 (Pixtral tower): patches merged per image by sizes read from the inputs",
    "internvl": "InternVL: its whole export returns the vision features at the traced token count",
}
ROUTE = "split at the language model"


class _Called(Exception):
    """Raised by the pre-hook: the language model was called; the forward stops there."""


def language_model_call(model: nn.Module, kwargs: dict[str, Any]) -> dict[str, Tensor]:
    """The tensor arguments of the call `model(**kwargs)` makes to its language model."""
    language_model = language_model_of(model)
    if language_model is None:
        raise ValueError(f"{type(model).__name__} has no language model")
    seen: dict[str, Tensor] = {}

    def stop(_: nn.Module, args: tuple[Any, ...], called: dict[str, Any]) -> None:
        seen.update({key: value for key, value in called.items() if isinstance(value, Tensor)})
        raise _Called

    handle = language_model.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**kwargs)
    except _Called:
        pass
    finally:
        handle.remove()
    if "inputs_embeds" not in seen:
        raise ValueError(f"{type(model).__name__} does not call its language model with `inputs_embeds`")
    return seen


def _batch_first(position_ids: Tensor, batch: int) -> Tensor:
    """`[B, T]` as is; M-RoPE's `[R, B, T]` as `[B, T, R]`."""
    if position_ids.ndim == 3 and position_ids.shape[1] == batch:
        return position_ids.permute(1, 2, 0)
    return position_ids.expand(batch, -1) if position_ids.ndim == 2 else position_ids


class LanguageHead(nn.Module):
    """A model's language model and output layer (module docstring); `config` is the model's."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        language_model, head = language_model_of(model), model.get_output_embeddings()
        if language_model is None or head is None:
            raise ValueError(f"{type(model).__name__} has no language model and output layer")
        self.language_model, self.head, self.config = language_model, head, model.config

    def forward(self, input_ids: Tensor, inputs_embeds: Tensor, position_ids: Tensor | None = None,
                attention_mask: Tensor | None = None) -> Tensor:
        """`inputs_embeds [B, T, D]`, `position_ids [B, T]` or `[B, T, R]` -> logits `[B, T, V]`."""
        if position_ids is not None and position_ids.ndim == 3:
            position_ids = position_ids.permute(2, 0, 1)
        hidden = self.language_model(inputs_embeds=inputs_embeds, position_ids=position_ids,
                                     attention_mask=attention_mask, use_cache=False)[0]
        return self.head(hidden)


class Prelude:
    """The model's code before its language model, run eagerly (module docstring):
    `prelude(processor kwargs) -> LanguageHead kwargs` (on the processor's device)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, kwargs: dict[str, Any]) -> dict[str, Tensor]:
        ids = kwargs["input_ids"]
        device = next(self.model.parameters()).device
        called = language_model_call(self.model, {k: v.to(device) if isinstance(v, Tensor) else v
                                                  for k, v in kwargs.items()})
        prepared = {"input_ids": ids, "inputs_embeds": called["inputs_embeds"].to(ids.device)}
        if "position_ids" in called:
            prepared["position_ids"] = _batch_first(called["position_ids"], ids.shape[0]).to(ids.device)
        if "attention_mask" in called and called["attention_mask"].ndim == 2:
            prepared["attention_mask"] = called["attention_mask"].to(ids.device)
        return prepared


def split_family(model: nn.Module) -> bool:
    """Whether `model` belongs to a family of `SPLIT_FAMILIES`."""
    return getattr(getattr(model, "config", None), "model_type", None) in SPLIT_FAMILIES


def split_at_language_model(model: nn.Module, kwargs: dict[str, Any]) -> tuple[LanguageHead, Prelude, dict[str, Tensor]]:
    """(the traced module, the prelude, its example inputs) of `model` on its example `kwargs`;
    raises `UntraceableModelError` when the split does not compute the model's own logits."""
    try:
        head, prelude = LanguageHead(model), Prelude(model)
        prepared = prelude(kwargs)
        with torch.no_grad():
            want, got = model(**kwargs).logits, head(**prepared)
    except (ValueError, TypeError, KeyError, RuntimeError) as error:
        raise UntraceableModelError([(ROUTE, f"{type(error).__name__}: {str(error).splitlines()[0]}")],
                                    "report the model family") from None
    error = relative_error(want, got)
    if not error <= EAGER_TOLERANCE.get(want.dtype, 1e-3):
        raise UntraceableModelError([(ROUTE, f"the language model and head alone differ from the whole model by "
                                             f"{error:.2g} of its logits' scale")], "report the model family")
    return head, prelude, prepared
