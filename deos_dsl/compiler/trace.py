"""The compiler front end: turn a model into an fx `GraphModule` with shapes on every node.

Tracers, tried in order until one succeeds:
1. `torch.export.export(strict=False)` with `Dim.AUTO` on the sequence dimension (dim 1) of
   every `[B, T]` / `[B, N, D]` tensor input, so that the length stays a symbol wherever the
   model allows it (export specialises it silently otherwise); `TracedModel.dynamic_dims`
   records which dims ended up symbolic (the discretise pass re-binds that symbol);
2. `torch.fx.symbolic_trace`, followed by fake-tensor propagation (`meta['val']`);
3. for HF vision-language models whose whole export fails on data-dependent preprocessing
   (Qwen2-VL, LLaVA-OneVision): `torch.export` of the language model alone on `inputs_embeds`.
Already traced input is accepted as is: an `fx.GraphModule` (propagated again when nodes lack
`meta['val']`) or an `ExportedProgram`. When every tracer fails, ONE `UntraceableModelError`
lists each tracer with the first line of its error.

A trace must equal the eager model: each traced graph is run beside the model on the example
inputs with their floating values perturbed (`eager_mismatch`), and a graph off by more than the
dtype's tolerance (`EAGER_TOLERANCE`, relative to the output's largest magnitude) counts as a
failed tracer, so the next one is tried (a silently wrong trace, e.g. a bidirectional prefix
mask traced causal, is never used). `DEOS_SKIP_EAGER_CHECK=1` skips the check; a model on the
meta device (shapes only, e.g. a 7B model costed without weights) has no values to compare.

Invariant of a `TracedModel`: every tensor-valued node has `meta['val']` (a fake tensor whose
shape may hold SymInts) and `graph_module(*args, **kwargs)` equals the model's forward.
"""

from __future__ import annotations

import inspect
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx, nn
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.export import Dim, ExportedProgram, export
from torch.fx.passes.fake_tensor_prop import FakeTensorProp
from torch.utils._pytree import tree_leaves, tree_map

from deos_dsl.errors import first_line

from .errors import UntraceableModelError

EXPORT, SYMBOLIC, LANGUAGE_MODEL = "torch.export", "torch.fx.symbolic_trace", "torch.export (language model on inputs_embeds)"
TRACERS = (EXPORT, SYMBOLIC, LANGUAGE_MODEL)
GIVEN_GRAPH, GIVEN_PROGRAM = "given fx.GraphModule", "given ExportedProgram"
GUARDS = "_guards_fn"  # the call_module export adds to check the shapes of the graph's inputs
LANGUAGE_MODEL_PATHS = ("model.language_model", "language_model")
HINT = ("make the forward traceable (no Python control flow on tensor values; see "
        "docs/operator.md), or trace it yourself and pass the fx.GraphModule / ExportedProgram "
        "(a trace that differs from the eager model is refused; DEOS_SKIP_EAGER_CHECK=1 uses it anyway)")


@dataclass
class TracedModel:
    """A traced graph plus what produced it.

    `root` is the module that was traced (the language model for the LM-only route) and
    `args`/`kwargs` are ITS example inputs; `dynamic_dims[input][dim]` is the symbol name of each
    dimension export kept symbolic; `failures` lists (tracer, error line) of the tracers tried first.
    """

    graph_module: fx.GraphModule
    tracer: str
    root: nn.Module | None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    dynamic_dims: dict[str, dict[int, str]] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def run(self) -> Any:
        """The graph's output on the example inputs."""
        return self.graph_module(*self.args, **self.kwargs)


def _bound_inputs(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> inspect.BoundArguments:
    return inspect.signature(model.forward).bind(*args, **kwargs)


def _sequence_spec(value: Any) -> dict[int, Any] | None:
    """`{1: Dim.AUTO}` for token-like inputs `[B, T]` (ids, masks) and `[B, N, D]` (embeddings)."""
    if isinstance(value, torch.Tensor) and value.ndim in (2, 3) and value.shape[1] > 1:
        return {1: Dim.AUTO}
    return None


def sequence_dynamic_shapes(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """`dynamic_shapes` for `export`, keyed like the forward's signature (a `**kwargs` is a dict)."""
    bound = _bound_inputs(model, args, kwargs)
    specs: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            specs[name] = {key: _sequence_spec(item) for key, item in value.items()}
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            specs[name] = tuple(_sequence_spec(item) for item in value)
        else:
            specs[name] = _sequence_spec(value)
    return specs


def symbolic_dims(gm: fx.GraphModule) -> dict[str, dict[int, str]]:
    """`placeholder -> {dim: symbol}` of the graph inputs whose dims stayed symbolic."""
    dims: dict[str, dict[int, str]] = {}
    for node in gm.graph.find_nodes(op="placeholder"):
        shape = getattr(node.meta.get("val"), "shape", ())
        symbols = {i: str(size) for i, size in enumerate(shape)
                   if isinstance(size, torch.SymInt) and size.node.expr.free_symbols}
        if symbols:
            dims[node.target] = symbols
    return dims


def expand_scatter_masks(gm: fx.GraphModule) -> fx.GraphModule:
    """`masked_scatter(x, mask, source)` with a mask that broadcasts (`[B, N, 1]` over `[B, N, D]`,
    how HF VLMs write image features over their placeholders) gets `mask.expand_as(x)`: the same
    values, and fake-tensor propagation of the broadcast form fails on a symbolic length."""
    for node in gm.graph.find_nodes(op="call_function", target=torch.ops.aten.masked_scatter.default):
        x, mask = node.args[0], node.args[1]
        if mask.meta["val"].shape == x.meta["val"].shape:
            continue
        with gm.graph.inserting_before(node):
            expanded = gm.graph.call_function(torch.ops.aten.expand_as.default, (mask, x))
        with detect_fake_mode([x.meta["val"]]) or nullcontext():
            expanded.meta.update(mask.meta, val=mask.meta["val"].expand_as(x.meta["val"]))
        node.update_arg(1, expanded)
    gm.recompile()
    return gm


def drop_metadata_assertions(gm: fx.GraphModule) -> fx.GraphModule:
    """Remove `aten._assert_tensor_metadata` nodes: export writes one before every `.to(dtype)`,
    asserting the dtype the TRACE saw, so the graph fails under autocast (the CUDA search runs
    in bf16 autocast: a float32 trace then sees bf16 tensors). They compute nothing. The graphs
    of higher-order ops (`wrap_with_set_grad_enabled`'s submodules: RoPE tables) included."""
    target = torch.ops.aten._assert_tensor_metadata.default
    for graph_module in [module for module in gm.modules() if isinstance(module, fx.GraphModule)]:
        for node in list(graph_module.graph.find_nodes(op="call_function", target=target)):
            graph_module.graph.erase_node(node)
        graph_module.recompile()
    return gm


def exported_graph(program: ExportedProgram) -> fx.GraphModule:
    """The graph module deos compiles from `program`: no trace-time dtype assertions, broadcast
    scatter masks expanded."""
    return expand_scatter_masks(drop_metadata_assertions(program.module()))


def export_dynamic(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.GraphModule:
    """`export(strict=False)` with `Dim.AUTO` on every sequence dim (`sequence_dynamic_shapes`);
    export specialises a dim silently where the model fixes it (`symbolic_dims` tells)."""
    dynamic = sequence_dynamic_shapes(model, args, kwargs)
    return exported_graph(export(model, args, kwargs, dynamic_shapes=dynamic, strict=False))


def _export(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.GraphModule:
    """`export_dynamic`, retried static if that fails."""
    try:
        return export_dynamic(model, args, kwargs)
    except Exception:  # noqa: BLE001  (any export failure: the static retry decides)
        return exported_graph(export(model, args, kwargs, strict=False))


EAGER_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}
PERTURBATION = 0.05  # noise added to each floating input, relative to its standard deviation


def _perturbed(value: Any, generator: torch.Generator) -> Any:
    if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
        return value
    noise = torch.randn(value.shape, generator=generator).to(value.device, value.dtype)
    scale = value.float().std().nan_to_num(1.0).clamp_min(1e-3).item() if value.numel() > 1 else 1.0
    return value + PERTURBATION * scale * noise


def _floating_leaves(output: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(output) if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()]


def _nondeterministic(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], first: list[torch.Tensor]) -> bool:
    """Whether a second eager run on the same inputs differs from the outputs `first`."""
    with torch.no_grad():
        second = _floating_leaves(model(*args, **kwargs))
    return len(second) != len(first) or any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(first, second))


def relative_error(want: torch.Tensor, got: torch.Tensor) -> float:
    """`max |want - got|` relative to `want`'s largest magnitude (inf where NaN; 0 when empty)."""
    if not want.numel():
        return 0.0
    want, got = want.detach().double(), got.detach().double()
    scale = want.abs().max().clamp_min(1e-6)
    return float(((want - got).abs().max() / scale).nan_to_num(float("inf")))


def eager_mismatch(model: nn.Module, gm: fx.GraphModule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """None when `gm` reproduces `model` on perturbed example inputs (module docstring), else
    what differs (one line)."""
    inputs = [v for v in tree_leaves((args, kwargs)) if isinstance(v, torch.Tensor)]
    if os.environ.get("DEOS_SKIP_EAGER_CHECK") == "1" or any(t.is_meta for t in (*inputs, *model.parameters())):
        return None  # skipped, or a model on the meta device: shapes only, no values to compare
    generator = torch.Generator().manual_seed(0)
    args, kwargs = tree_map(lambda v: _perturbed(v, generator), (args, kwargs))
    with torch.no_grad():
        expected = _floating_leaves(model(*args, **kwargs))
        try:
            traced = _floating_leaves(gm(*args, **kwargs))
        except Exception as error:  # noqa: BLE001  (a graph that fails on new values is a wrong trace)
            return f"the traced graph fails on new input values: {first_line(error)}"
    if len(traced) != len(expected):
        return f"the traced graph returns {len(traced)} floating outputs, the eager model {len(expected)}"
    for index, (want, got) in enumerate(zip(expected, traced)):
        if want.shape != got.shape:
            return f"output {index} is {tuple(got.shape)} traced, {tuple(want.shape)} eager"
        error = relative_error(want, got)
        tolerance = EAGER_TOLERANCE.get(want.dtype, 1e-3)
        if not error <= tolerance:
            if _nondeterministic(model, args, kwargs, expected):
                return ("the eager model is not deterministic: two runs on the same inputs differ (random "
                        "masking or sampling in its forward, or dropout left on)")
            return (f"the traced graph differs from the eager model by {error:.2g} of output {index}'s scale "
                    f"(tolerance {tolerance:g} in {str(want.dtype).removeprefix('torch.')})")
    return None


def placeholder_values(gm: fx.GraphModule, root: nn.Module | None, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> list[Any]:
    """The value of each placeholder of `gm` (a trace of `root`) for the call `root(*args, **kwargs)`."""
    placeholders = gm.graph.find_nodes(op="placeholder")
    if kwargs and root is not None:
        bound = _bound_inputs(root, args, kwargs)
        bound.apply_defaults()
        return [bound.arguments.get(node.target) for node in placeholders]
    return list(args) + [kwargs.get(node.target) for node in placeholders[len(args):]]


def propagate(gm: fx.GraphModule, root: nn.Module | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Fill `meta['val']` of every node with fake tensors computed from the example inputs."""
    values = placeholder_values(gm, root, args, kwargs)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fakes = [mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for v in values]
    FakeTensorProp(gm, mode).propagate(*fakes)


def _symbolic_trace(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.GraphModule:
    gm = fx.symbolic_trace(model)
    propagate(gm, model, args, kwargs)
    return gm


def language_model_of(model: nn.Module) -> nn.Module | None:
    """The text decoder of an HF vision-language model (`model.language_model`), if any."""
    for path in LANGUAGE_MODEL_PATHS:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    return None


def language_model_inputs(language_model: nn.Module, length: int, batch: int = 2) -> dict[str, Any]:
    """Example `inputs_embeds [batch, length, hidden]` (seeded) for an HF language model."""
    hidden = language_model.config.hidden_size
    embeds = torch.randn(batch, length, hidden, generator=torch.Generator().manual_seed(0))
    param = next(language_model.parameters(), None)
    if param is not None:
        embeds = embeds.to(device=param.device, dtype=param.dtype)
    return {"inputs_embeds": embeds, "use_cache": False}


def trace_language_model(model: nn.Module, length: int = 24) -> TracedModel:
    """Export the language model of a VLM alone on `inputs_embeds` of `length` tokens."""
    language_model = language_model_of(model)
    if language_model is None:
        raise AttributeError(f"{type(model).__name__} has no {' / '.join(LANGUAGE_MODEL_PATHS)}")
    kwargs = language_model_inputs(language_model, length)
    gm = _export(language_model, (), kwargs)
    problem = eager_mismatch(language_model, gm, (), kwargs)
    if problem:
        raise ValueError(problem)
    return TracedModel(gm, LANGUAGE_MODEL, language_model, (), kwargs, symbolic_dims(gm))


def _from_traced(traced: fx.GraphModule | ExportedProgram, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TracedModel:
    if isinstance(traced, ExportedProgram):
        gm = exported_graph(traced)
        return TracedModel(gm, GIVEN_PROGRAM, None, args, kwargs, symbolic_dims(gm))
    if any(node.op != "output" and "val" not in node.meta for node in traced.graph.nodes):
        propagate(traced, None, args, kwargs)
    return TracedModel(traced, GIVEN_GRAPH, None, args, kwargs, symbolic_dims(traced))


def _is_cache(value: Any) -> bool:
    """A key-value cache object (transformers' `Cache` classes), by its type's name."""
    return any(cls.__name__.endswith("Cache") for cls in type(value).__mro__)


def trace(model: nn.Module | fx.GraphModule | ExportedProgram, args: tuple[Any, ...] = (),
          kwargs: dict[str, Any] | None = None, tracers: tuple[str, ...] = TRACERS,
          language_model_length: int = 24) -> TracedModel:
    """Trace `model` on the example inputs with the first of `tracers` that succeeds (in order).

    `language_model_length` is the sequence length of the LM-only fallback's `inputs_embeds`.
    Raises `UntraceableModelError` naming every tracer tried and why it failed.
    """
    kwargs = dict(kwargs or {})
    if isinstance(model, (fx.GraphModule, ExportedProgram)):
        return _from_traced(model, args, kwargs)
    caches = [f"`{key}` is a {type(value).__name__}" for key, value in kwargs.items() if _is_cache(value)]
    if caches:
        raise UntraceableModelError([("the example inputs", f"{', '.join(caches)} (a key-value cache object)")],
                                    "deos traces the prefill, which starts without a cache: drop the cache from the "
                                    "example inputs and load the model with use_cache=False")
    runs: dict[str, Callable[[], fx.GraphModule]] = {
        EXPORT: lambda: _export(model, args, kwargs),
        SYMBOLIC: lambda: _symbolic_trace(model, args, kwargs),
    }
    failures: list[tuple[str, str]] = []
    for name, run in ((name, runs[name]) for name in tracers if name in runs):
        try:
            gm = run()
        except Exception as error:  # noqa: BLE001  (every tracer failure is collected and reported)
            failures.append((name, first_line(error)))
            continue
        problem = eager_mismatch(model, gm, args, kwargs)
        if problem:  # a wrong graph is a failed tracer: the next one may be right
            failures.append((name, problem))
            continue
        return TracedModel(gm, name, model, args, kwargs, symbolic_dims(gm), failures)
    if LANGUAGE_MODEL in tracers and language_model_of(model) is not None:
        try:
            traced = trace_language_model(model, language_model_length)
        except Exception as error:  # noqa: BLE001
            failures.append((LANGUAGE_MODEL, first_line(error)))
        else:
            traced.failures = failures
            return traced
    returns_cache = any("Cache" in error and "output" in error for _, error in failures)
    raise UntraceableModelError(failures, HINT + ("; it returns a key-value cache object: load it with use_cache=False"
                                                  if returns_cache else ""))
