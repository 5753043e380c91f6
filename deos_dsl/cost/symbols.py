"""The symbols of a cost formula: the batch, the token counts of each stack and one per site.

- `B`: the batch (axis 0 of every graph input and stream);
- `N_text`: the protected tokens of a decoder stream (everything outside its reducible span);
- `N_vis`: the reducible tokens a stack starts with (the visual tokens). A vision stack whose
  reducible span is as long as the decoder's shares `N_vis` (its patches ARE the decoder's
  visual tokens, e.g. LLaVA); otherwise its patches are `N_patch`. A vision stack's protected
  tokens (CLS) stay a number;
- one symbol per bound site, the reducible tokens LEAVING it (what the next site of the chain
  reduces): `N_vis_<l>` for decoder layer `l`, `N_vis_vision_<l>`, `N_vis_projector`, and
  `N_vis_<path>` for a block of another stack (`_<k>` appended when two sites share a block);
- one gate per site, `G_vis_<l>` (1 when the site is active): it switches the site's own
  overhead (its score and operator) on.
Every token symbol is a nonnegative integer; `B` is a positive one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy

from deos_dsl.compiler.blocks import BlockMap, Stack

from .shapes import hint

B = sympy.Symbol("B", integer=True, positive=True)
N_TEXT = sympy.Symbol("N_text", integer=True, nonnegative=True)
N_VIS = sympy.Symbol("N_vis", integer=True, nonnegative=True)
N_PATCH = sympy.Symbol("N_patch", integer=True, nonnegative=True)
SITE_PREFIX = {"decoder": "N_vis_", "vision": "N_vis_vision_", "projector": "N_vis_projector"}


def count_symbol(name: str) -> sympy.Symbol:
    """A token-count symbol (a nonnegative integer)."""
    return sympy.Symbol(name, integer=True, nonnegative=True)


def gate_of(symbol: sympy.Symbol) -> sympy.Symbol:
    """The gate of a site symbol: `N_vis_2 -> G_vis_2`."""
    return sympy.Symbol("G" + symbol.name.removeprefix("N"), integer=True, nonnegative=True)


def site_symbol(role: str | None, index: int, path: str, taken: set[str]) -> sympy.Symbol:
    """The symbol of a site on block `path` (`index` in its stack) that no name in `taken` has."""
    if role == "projector":
        name = SITE_PREFIX["projector"]
    elif role in SITE_PREFIX:
        name = f"{SITE_PREFIX[role]}{index}"
    else:
        name = "N_vis_" + re.sub(r"\W", "_", path)
    unique, k = name, 1
    while unique in taken:
        unique, k = f"{name}_{k}", k + 1
    taken.add(unique)
    return count_symbol(unique)


@dataclass(frozen=True)
class Seed:
    """The symbolic length `protected + reducible` a stack's stream starts with.

    `protected` is `N_text` or a number; `reducible` is the stack's reducible symbol (None for a
    stack without a reducible span, whose whole length is then `protected`)."""

    protected: sympy.Expr
    reducible: sympy.Symbol | None

    @property
    def length(self) -> sympy.Expr:
        return self.protected + (self.reducible if self.reducible is not None else 0)


def _length(stack: Stack) -> int:
    return hint(stack.blocks[0].entry.meta["val"].shape[1])


def stack_seeds(block_map: BlockMap) -> tuple[dict[str, Seed], dict[sympy.Symbol, int]]:
    """`stack prefix -> Seed` for the vision and decoder stacks, and the dense value of every
    symbol the seeds use (module docstring)."""
    seeds: dict[str, Seed] = {}
    values: dict[sympy.Symbol, int] = {}
    decoder, vision = block_map.stack("decoder"), block_map.stack("vision")
    decoder_span = block_map.spans.get("decoder") if decoder is not None else None
    if decoder is not None:
        total = _length(decoder)
        visual = decoder_span[1] - decoder_span[0] if decoder_span else 0
        if visual:
            seeds[decoder.prefix] = Seed(N_TEXT if total > visual else sympy.Integer(0), N_VIS)
            values[N_VIS] = visual
        else:
            seeds[decoder.prefix] = Seed(N_TEXT, None)
        values[N_TEXT] = total - visual
    vision_span = block_map.spans.get("vision") if vision is not None else None
    if vision is not None and vision_span is not None:
        patches = vision_span[1] - vision_span[0]
        symbol = N_VIS if values.get(N_VIS, patches) == patches else N_PATCH
        seeds[vision.prefix] = Seed(sympy.Integer(_length(vision) - patches), symbol)
        values[symbol] = patches
    return seeds, values
