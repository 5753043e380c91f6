"""deos_dsl.compiler: tracing, the block map, the model registry, and what the passes work with.

>>> loaded = resolve_model("embedded")
>>> traced = trace(loaded.model, loaded.args, loaded.kwargs)     # torch.export, else fx
>>> block_map = build_block_map(traced, loaded.roles, loaded.spans)

The passes (`deos_dsl.passes`, each a torch.fx PassBase) share the data types of `sites`
(`BoundSite`, `SiteScores`, the meta keys, the site-module factory) and edit graphs with
`graph_edit`, `rebind`, `token_flow`, `site_module` / `hard_site`; `deos_dsl.pipeline` runs
them in order (a stack whose length export fixed is re-traced alone by `stack_retrace`, its
image tokens shrunk by `image_tokens`).
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
