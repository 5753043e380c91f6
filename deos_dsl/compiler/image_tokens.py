"""Fewer image placeholders for the decoder of a vision-language model whose image features shrink.

An HF LLaVA-style model writes its N image features over the N placeholder tokens
(`config.image_token_id`) of each row of `input_ids`. When sites on the vision tower or on the
projector leave N' < N features, the emitted model keeps the same inputs and
`CompactImageTokens` drops the LAST N - N' placeholders of each row, with the matching entries
of `attention_mask` and `labels`, before calling the model: the decoder sequence is then
[text before, N' image features, text after] with contiguous positions, exactly as if the
processor had written N' placeholders. Both counts are static (every row holds N placeholders),
so every shape stays static. `position_ids` must not be passed (the model derives them from the
compacted sequence).

N' is measured once by the (reduced) model's `get_image_features` on the example pixels: the
features one image gives the decoder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from deos_dsl.errors import DeosCompileError

from .errors import ReducedModelError

SEQUENCE_INPUTS = ("input_ids", "attention_mask", "labels")
HINT = "emit sites on the vision tower or projector of an HF LLaVA-style model (image placeholders in input_ids)"


def image_token_id(model: nn.Module) -> int | None:
    """The image placeholder id of an HF vision-language model's config, if any."""
    config = getattr(model, "config", None)
    token = getattr(config, "image_token_id", None)
    return token if token is not None else getattr(config, "image_token_index", None)


class CompactImageTokens(nn.Module):
    """`module` called with the last `placeholders - features` image placeholders of every row
    of the `[B, T]` sequence inputs removed (`[B, T - placeholders + features]`)."""

    def __init__(self, module: nn.Module, token_id: int, placeholders: int, features: int) -> None:
        super().__init__()
        self.module = module
        self.token_id, self.placeholders, self.features = token_id, placeholders, features

    def compact(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """`inputs` with the surplus placeholders (and their mask and label entries) removed."""
        ids: Tensor = inputs["input_ids"]
        image = ids == self.token_id
        surplus = image & (image.cumsum(dim=1) > self.features)
        # the kept positions in order: a stable sort puts the surplus placeholders last
        length = ids.shape[1] - (self.placeholders - self.features)
        kept = torch.argsort(surplus.to(torch.int32), dim=1, stable=True)[:, :length]
        compacted = {name: inputs[name].gather(1, kept) for name in SEQUENCE_INPUTS if inputs.get(name) is not None}
        return {**inputs, **compacted}

    def forward(self, **inputs: Any) -> Any:
        return self.module(**self.compact(inputs))


def compact_image_tokens(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CompactImageTokens:
    """`model` (with its vision stack reduced) behind `CompactImageTokens`; raises
    `DeosCompileError` when it has no image placeholders in keyword inputs or the rows hold
    different numbers of them."""
    token = image_token_id(model)
    ids = kwargs.get("input_ids")
    if args or token is None or not isinstance(ids, Tensor) or "pixel_values" not in kwargs:
        raise DeosCompileError(f"{type(model).__name__}: the reduced vision tokens feed a decoder, but there are no "
                               "image placeholders (config.image_token_id) in keyword inputs input_ids / pixel_values "
                               "to shrink with them", HINT)
    counts = (ids == token).sum(dim=1).unique()
    if counts.numel() != 1:
        raise DeosCompileError(f"the rows of input_ids hold different numbers of image placeholders ({counts.tolist()})",
                               "give every example row the same image")
    try:
        with torch.no_grad():
            image = model.get_image_features(pixel_values=kwargs["pixel_values"])
    except Exception as error:  # noqa: BLE001  (the model's own code on the reduced vision stream)
        raise ReducedModelError(f"{type(model).__name__}.get_image_features", error) from error
    features = getattr(image, "pooler_output", image)  # one [N', D] per image (or [B, N', D])
    return CompactImageTokens(model, token, int(counts[0]), int(features[0].shape[-2]))
