"""deos_dsl.compiler: the compiler front end (tracing), the block map and the model registry.

>>> loaded = resolve_model("embedded")
>>> traced = trace(loaded.model, loaded.args, loaded.kwargs)     # torch.export, else fx
>>> block_map = build_block_map(traced, loaded.roles, loaded.spans)
>>> from deos_dsl.passes.bind_sites import bind_sites             # pass 1 (torch.fx PassBase)

Then, each a torch.fx PassBase in `deos_dsl.passes`: insert_scores (2), insert_relaxed (3, the
search graph with `site_module.SiteModule`s), or discretise (4, hard sites, sequence re-binding),
cleanup (5) and verify (6); `emit.compile_emitted` / `emit.write_artifacts` run 1, 2, 4-6 and
write model.pt2, model.py and plan.json (`deos emit`; a stack whose length export fixed is
re-traced alone by `stack_retrace`, its image tokens shrunk by `image_tokens`).
"""

from .blocks import Block, BlockMap, SideTensor, Stack, build_block_map
from .errors import BlockMapError, UnknownModelError, UntraceableModelError
from .models import LoadedModel, resolve_model
from .trace import TracedModel, trace, trace_language_model

__all__ = [
    "Block", "BlockMap", "BlockMapError", "LoadedModel", "SideTensor", "Stack",
    "TracedModel", "UnknownModelError", "UntraceableModelError", "build_block_map", "resolve_model",
    "trace", "trace_language_model",
]
