"""deos_dsl.compiler: the compiler front end (tracing), the block map and the model registry.

>>> loaded = resolve_model("embedded")
>>> traced = trace(loaded.model, loaded.args, loaded.kwargs)     # torch.export, else fx
>>> block_map = build_block_map(traced, loaded.roles, loaded.spans)
>>> from deos_dsl.passes.bind_sites import bind_sites             # pass 1 (torch.fx PassBase)
"""

from .blocks import Block, BlockMap, SideTensor, Stack, build_block_map
from .errors import BlockMapError, DeosCompileError, UnknownModelError, UntraceableModelError
from .models import LoadedModel, resolve_model
from .trace import TracedModel, trace, trace_language_model

__all__ = [
    "Block", "BlockMap", "BlockMapError", "DeosCompileError", "LoadedModel", "SideTensor", "Stack",
    "TracedModel", "UnknownModelError", "UntraceableModelError", "build_block_map", "resolve_model",
    "trace", "trace_language_model",
]
