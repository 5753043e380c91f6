"""The reducible span `[start, end)` of a bound site's stream, from the space's `tokens` block.

- `reducible: span(a, b)`: exactly `[a, b)`;
- `reducible: visual`: the block map's span of the block's role (the visual tokens of a
  decoder, the patch tokens of a vision encoder, the whole projector output);
- `reducible: all`: every token but the protected ones: the role's span when text / system
  tokens are protected (they are everything outside it), else `[1 if cls else 0, N)`.
The span must be contiguous: the DSL has no other reducible set.
"""

from __future__ import annotations

from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from deos_dsl.errors import DeosCompileError
from deos_dsl.frontend import ir

from .blocks import Block, BlockMap, example_size
from .trace import LANGUAGE_MODEL

Span = tuple[int, int]


def reducible_span(space: ir.Space, block_map: BlockMap, block: Block) -> Span:
    """The reducible `[start, end)` at `block`'s output (module docstring); raises `DeosCompileError`."""
    tokens = space.tokens or ir.Tokens()
    reducible = tokens.reducible or ir.Reducible(kind="visual")
    protected = tokens.protected or []
    try:
        length = example_size(block.exit.meta["val"].shape[1])
    except GuardOnDataDependentSymNode:
        raise DeosCompileError(f"block `{block.path}`: the length of its stream depends on the input values",
                               "the model selects tokens by value before this block (e.g. drops padding images); "
                               "deos reduces streams whose lengths follow from the input shapes") from None
    if reducible.kind == "span":
        assert isinstance(reducible.start, ir.Num) and isinstance(reducible.end, ir.Num)
        span = (int(reducible.start.value), int(reducible.end.value))
    elif reducible.kind == "all" and not {"text", "system"} & set(protected):
        span = (1 if "cls" in protected else 0, int(length))
    else:
        span = block_map.spans.get(block.role or "")
        if span is None and block_map.traced.tracer == LANGUAGE_MODEL:
            failed = "; ".join(f"{tracer}: {error}" for tracer, error in block_map.traced.failures[:1])
            raise DeosCompileError(f"the whole model did not trace ({failed[:300]}), so its language model was traced "
                                   "alone on stand-in `inputs_embeds`, where no image tokens are known",
                                   "make the whole model trace (the failure above), or write `reducible: span(a, b)` "
                                   "with the image tokens' positions in your prompt")
        if span is None:
            raise DeosCompileError(f"block `{block.path}`: no reducible span is known for role `{block.role}`",
                                   "write `reducible: span(a, b)` in the space, or pass spans= to the model")
    if not 0 <= span[0] < span[1] <= int(length):
        raise DeosCompileError(f"block `{block.path}`: reducible span {span} does not fit its {length} tokens",
                               "fix the span in the space's `tokens` block")
    return span
