"""Stack re-trace: emit the sites of a block stack whose sequence length a whole-model export fixed.

HF vision encoders (CLIP, SigLIP, ViT, LLaVA's vision tower) cannot be traced with
`torch.fx.symbolic_trace`, and their whole-model export specialises the token count N (the
position embeddings fix it), so `passes/discretise.py` cannot re-bind the length after a site.
The blocks themselves read N from their input: exported ALONE on their `[B, N, D]` input, the
part of the model holding them keeps N symbolic. The same holds for the PROJECTOR (a module
applied per token, `[B, N, Dv] -> [B, N, D]`): the block map's projector is a ONE-BLOCK STACK
(`fixed_lengths`, `static_stack`), re-traced when its output length is fixed. That is HF LLaVA:
the vision tower fixes N, and after the projector the features are split per image and
`masked_scatter`ed over the image placeholders of the decoder's sequence, which the whole-graph
token flow cannot follow. The route (`retrace_stack`):

1. TARGET: the stack's CONTAINER, the parent of its module list (`encoder` of CLIP / SigLIP,
   `model.vision_tower.encoder` of LLaVA), when it receives block 0's stream as an input; else
   (the blocks sit on the model's root, e.g. transformers 5 ViT, whose root takes pixels) the
   module list itself run as a `Chain`: block i + 1 gets block i's output and block 0's other
   inputs (every block must return its stream as a tensor and get the same other inputs);
   a one-block stack that is no module list (the projector) is its own target;
2. one eager run of the model on its example inputs records the target's call (forward hooks);
3. the target is exported alone (`export_dynamic`) with the call's tensors as positional
   inputs (its other arguments are constants of the call), MOUNTED at its own path so that node
   paths, block paths and site names are the model's; the graph also returns the STREAMS
   (block 0's input and every block's output, after its site once discretised) so that forward
   hooks on the original blocks (transformers' hidden-state capture: LLaVA's feature layer)
   are replayed with the tokens the next module really sees;
4. the block map of that graph keeps the stack's role and reducible span from the whole graph
   (the CLS offset stays; a projector graph holds no stack, only the projector); bind_sites ...
   verify then run on it unchanged;
5. `Retraced.reduced_model` is a shallow copy of the user's model (`replaced`: only the
   modules on the target's path are copied, the user's model is never patched) with
   `StackGraph` (the discretised graph) in the target's place: the rest of the model
   (post-layernorm, pooler, a projector and a decoder) sees the reduced tokens, and the
   `.pt2` is that whole model re-exported with static shapes. A tensor that the model passes
   where the recorded call had None is ignored: transformers materialises a skipped all-true
   attention mask under export (ViT), which the eager call never had.

This route emits ONE stack. A LLaVA space with sites on the vision tower, the projector and the
decoder is emitted in stages, most upstream first (`static_stack` picks that stack,
`downstream_stacks` says which others may follow; `pipeline/emit.py` runs the stages on the
reduced model). Refusals (`DeosCompileError`): active sites on a stack the static one does not
feed (a decoder site with a vision-only model's stack, two unrelated stacks), and a stack that no
target fits or whose target export still fixes N (something inside it, e.g. a token-mixing
layer): the message lists every route tried.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from deos_dsl.errors import DeosCompileError, first_line

from .blocks import BlockMap, Stack
from .sites import BoundSite
from .trace import SYMBOLIC, TracedModel, export_dynamic, symbolic_dims

CONTAINER_ROUTE = "torch.export (stack container `{}` on its input, dynamic length)"
CHAIN_ROUTE = "torch.export (blocks of `{}` chained on their stream, dynamic length)"
MODULE_ROUTE = "torch.export (module `{}` alone on its input, dynamic length)"
HINT = ("make the stack's container export with a dynamic sequence length (nothing inside it may fix N, "
        "e.g. learned positions or token-mixing layers), or make the model traceable with torch.fx.symbolic_trace")
KeyPath = tuple[Any, ...]


@dataclass
class Call:
    """One recorded module call: its arguments and output (real tensors of the eager run)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any

    def tensor_paths(self) -> list[KeyPath]:
        """Pytree paths of the call's tensor arguments, in flattening order."""
        return [path for path, leaf in pytree.tree_flatten_with_path((self.args, self.kwargs))[0]
                if isinstance(leaf, Tensor)]

    def tensors(self) -> tuple[Tensor, ...]:
        return tuple(leaf for leaf in pytree.tree_leaves((self.args, self.kwargs)) if isinstance(leaf, Tensor))

    def with_tensors(self, tensors: tuple[Tensor, ...]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's `(args, kwargs)` with its tensor arguments replaced by `tensors`, in order."""
        new = iter(tensors)
        leaves, spec = pytree.tree_flatten((self.args, self.kwargs))
        return pytree.tree_unflatten([next(new) if isinstance(leaf, Tensor) else leaf for leaf in leaves], spec)


def _stream(value: Any) -> Tensor:
    """The `[B, N, D]` stream of a block's input or output: the value itself or its first tensor."""
    return next(leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, Tensor))


class Chain(nn.ModuleList):
    """Blocks run in sequence on `stream`, each with the same other arguments."""

    def forward(self, stream: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        for block in self:
            stream = block(stream, *args, **kwargs)
        return stream


class PassThrough(nn.Module):
    """Stands in for a block that `StackGraph` already ran: returns its stream."""

    def forward(self, stream: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return stream


@dataclass
class Target:
    """What is exported (`module`, called as in `call`, block 0's stream its `stream_at`-th
    tensor) and where it sits in the model (`path`)."""

    path: str
    module: nn.Module
    call: Call
    route: str
    stream_at: int


class Mounted(nn.Module):
    """The exported root: `target.module` mounted at `target.path` (through empty parents, so
    nn_module_stack paths are the model's own), called as the recorded call with its tensors
    as positional inputs; returns `(the target's output, streams)` (module docstring, step 3)."""

    def __init__(self, target: Target, blocks: list[nn.Module]) -> None:
        super().__init__()
        parent: nn.Module = self
        *heads, last = target.path.split(".")
        for head in heads:
            parent.add_module(head, nn.Module())
            parent = getattr(parent, head)
        parent.add_module(last, target.module)
        self._target, self._blocks = target, blocks

    def forward(self, *tensors: Tensor) -> tuple[Any, tuple[Tensor, ...]]:
        args, kwargs = self._target.call.with_tensors(tensors)
        streams: list[Tensor] = []
        hooks = [self._blocks[0].register_forward_pre_hook(
            lambda _, inputs, named: streams.append(_stream((inputs, named))), with_kwargs=True)]
        hooks += [block.register_forward_hook(lambda _, __, output: streams.append(_stream(output)))
                  for block in self._blocks]
        try:
            output = self.get_submodule(self._target.path)(*args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
        return output, tuple(streams)


def replay_forward_hooks(block: nn.Module, entering: Tensor, leaving: Tensor) -> None:
    """Call `block`'s forward hooks as if it had run on `entering` and returned `leaving`."""
    for key, hook in list(block._forward_hooks.items()):
        if block._forward_hooks_with_kwargs.get(key):
            hook(block, (entering,), {}, leaving)
        else:
            hook(block, (entering,), leaving)


class StackGraph(nn.Module):
    """The discretised target graph in the target's place: called as the target is, it feeds
    the graph the call's tensors at the recorded paths, replays the original blocks' forward
    hooks on the streams and returns the target's output."""

    def __init__(self, graph: fx.GraphModule, call: Call, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.graph = graph
        self._paths, self._blocks = call.tensor_paths(), tuple(blocks)  # blocks: not registered

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        leaves = dict(pytree.tree_flatten_with_path((args, kwargs))[0])
        output, streams = self.graph(*(leaves[path] for path in self._paths))
        for block, entering, leaving in zip(self._blocks, streams, streams[1:]):
            replay_forward_hooks(block, entering, leaving)
        return output


def replaced(model: nn.Module, path: str, replacement: nn.Module) -> nn.Module:
    """A shallow copy of `model` with `replacement` at `path`: the modules on the path are copied
    (with their own child dicts), everything else (parameters, blocks, hooks, config) is shared,
    and `model` itself is left untouched."""

    def clone(module: nn.Module) -> nn.Module:
        twin = copy.copy(module)
        twin._modules = dict(module._modules)
        return twin

    root = parent = clone(model)
    *heads, last = path.split(".")
    for head in heads:
        child = parent._modules[head] = clone(parent._modules[head])
        parent = child
    parent._modules[last] = replacement
    return root


@dataclass
class Retraced:
    """The target's graph (`traced`, tracer = the route), the block-map overrides that keep
    the stack's role and span, and what installs the graph back into `model`."""

    traced: TracedModel
    roles: dict[str, str]
    spans: dict[str, tuple[int, int]]
    model: nn.Module
    target: Target
    blocks: list[nn.Module]

    def reduced_model(self) -> nn.Module:
        """The user's model (a shallow copy) running `traced`'s (discretised) graph in the target's place."""
        graph = StackGraph(self.traced.graph_module, self.target.call, self.blocks)
        replacement: nn.Module = graph
        if isinstance(self.target.module, Chain):
            replacement = nn.ModuleList([graph, *(PassThrough() for _ in self.blocks[1:])])
        return replaced(self.model, self.target.path, replacement)


# ---- which stack needs the route ----------------------------------------------------------


def fixed_lengths(block_map: BlockMap) -> set[str]:
    """The stacks (and the projector) whose stream length the trace fixed to a constant; read
    it before any pass runs (a pass's fake-tensor propagation may specialise a symbol)."""
    traced = block_map.traced
    if traced.tracer == SYMBOLIC or traced.root is None:  # symbolic graphs re-bind; given ones cannot re-trace
        return set()
    return {stack.prefix for stack in _stacks(block_map) if stack.blocks[0].shape[1].isdigit()}


def _stacks(block_map: BlockMap) -> list[Stack]:
    """The block map's stacks, and its projector as a one-block stack (module docstring)."""
    projector = block_map.projector
    return block_map.stacks + ([Stack(projector.path, [projector], "projector")] if projector is not None else [])


# role -> the roles its tokens flow into; the keys are in flow order (`static_stack` reads it as such)
FEEDS = {"vision": ("projector", "decoder"), "projector": ("decoder",)}


def downstream_stacks(block_map: BlockMap, role: str | None) -> set[str]:
    """The prefixes of the stacks (the projector included) that a reduced `role` stack feeds
    and that a later stage can emit: none without a decoder (no image placeholders to shrink)."""
    if block_map.stack("decoder") is None:
        return set()
    return {stack.prefix for stack in _stacks(block_map) if stack.role in FEEDS.get(role or "", ())}


def static_stack(block_map: BlockMap, sites: list[BoundSite], active: set[str], fixed: set[str]) -> Stack | None:
    """The most upstream stack of the `active` sites on a `fixed` length (`fixed_lengths`;
    None: the graph can be re-bound as it is); raises `DeosCompileError` when the schedule also
    has active sites elsewhere than in the stacks it feeds (`downstream_stacks`: emitted in
    later stages). A site the schedule leaves off is no site: it emits nothing."""
    static = [site for site in sites if site.name in active and site.block.stack in fixed]
    if not static:
        return None
    order = tuple(FEEDS)
    site = min(static, key=lambda s: order.index(s.block.role) if s.block.role in order else len(order))
    others = sorted({s.block.stack for s in sites if s.name in active} - {site.block.stack}
                    - downstream_stacks(block_map, site.block.role))
    if others:
        raise DeosCompileError(f"site `{site.name}`: the STATIC-length `{site.block.stack}` is emitted by "
                               f"re-tracing it alone, but the space also has sites on {', '.join(f'`{p}`' for p in others)}",
                               "emit the sites of one stack per space (e.g. only the vision tower's)")
    return next(stack for stack in _stacks(block_map) if stack.prefix == site.block.stack)


# ---- the route ----------------------------------------------------------------------------


def _record(model: nn.Module, modules: list[nn.Module], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[nn.Module, list[Call]]:
    """Every call of `modules` during one eager run of `model(*args, **kwargs)`."""
    calls: dict[nn.Module, list[Call]] = {module: [] for module in modules}

    def hook(module: nn.Module) -> Callable[..., None]:
        return lambda _, a, k, output: calls[module].append(Call(a, dict(k), output))

    handles = [module.register_forward_hook(hook(module), with_kwargs=True) for module in modules]
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _chain_problem(calls: list[list[Call]]) -> str | None:
    """Why the blocks cannot run as a `Chain` (None: they can)."""
    if any(len(block_calls) != 1 for block_calls in calls):
        return "a block is not called exactly once"
    first = calls[0][0]
    side, spec = pytree.tree_flatten((first.args[1:], first.kwargs))
    for index, (call,) in enumerate(calls):
        if not call.args or not isinstance(call.args[0], Tensor) or not isinstance(call.output, Tensor):
            return "a block does not take and return its stream as a tensor (first argument, output)"
        if index and call.args[0] is not calls[index - 1][0].output:
            return "a block's first argument is not the previous block's output"
        leaves, other = pytree.tree_flatten((call.args[1:], call.kwargs))
        if other != spec or any(a is not b and (isinstance(a, Tensor) or a != b) for a, b in zip(leaves, side)):
            return "the blocks get different side arguments"
    return None


def _target(model: nn.Module, stack: Stack, blocks: list[nn.Module], args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> Target:
    """The container when it receives block 0's stream, else the chained blocks (docstring, step 1);
    raises `ValueError` saying why neither fits."""
    if not isinstance(model.get_submodule(stack.prefix), nn.ModuleList):  # one module (the projector): itself
        container_path, container = stack.prefix, blocks[0]
    else:
        container_path = stack.prefix.rpartition(".")[0]
        container = model.get_submodule(container_path) if container_path else None
    calls = _record(model, list(dict.fromkeys(blocks + ([container] if container is not None else []))), args, kwargs)
    if not calls[blocks[0]]:
        raise ValueError(f"the blocks of `{stack.prefix}` do not run on the example inputs")
    first = calls[blocks[0]][0]
    stream = _stream((first.args, first.kwargs))
    if container is not None and len(calls[container]) == 1:
        at = [i for i, tensor in enumerate(calls[container][0].tensors()) if tensor is stream]
        if at:
            route = (CONTAINER_ROUTE if container_path != stack.prefix else MODULE_ROUTE).format(container_path)
            return Target(container_path, container, calls[container][0], route, at[0])
    problem = _chain_problem([calls[block] for block in blocks])
    if problem is not None:
        where = f"`{container_path}` does not receive the stream" if container is not None else "no container"
        raise ValueError(f"{where}, and the blocks cannot be chained: {problem}")
    return Target(stack.prefix, Chain(blocks), first, CHAIN_ROUTE.format(stack.prefix), 0)


def _export(target: Target, blocks: list[nn.Module]) -> tuple[Mounted, fx.GraphModule]:
    """The mounted target exported with a dynamic length; raises if the stream's length is fixed."""
    mounted = Mounted(target, blocks)
    gm = export_dynamic(mounted, target.call.tensors(), {})
    stream = gm.graph.find_nodes(op="placeholder")[target.stream_at]
    if 1 not in symbolic_dims(gm).get(stream.target, {}):
        raise ValueError(f"export specialised the sequence length of `{target.path}` (something inside it fixes N)")
    return mounted, gm


def retrace_stack(block_map: BlockMap, stack: Stack) -> Retraced:
    """Export `stack`'s target alone with a dynamic length (module docstring); raises
    `DeosCompileError` listing the tracers and routes tried when that fails."""
    traced = block_map.traced
    model = traced.root
    assert model is not None, "static_stack only returns stacks of a traced model"
    module = model.get_submodule(stack.prefix)
    blocks = list(module) if isinstance(module, nn.ModuleList) else [module]
    route = f"stack re-trace of `{stack.prefix}`"
    try:
        target = _target(model, stack, blocks, traced.args, traced.kwargs)
        route = target.route
        mounted, gm = _export(target, blocks)
    except Exception as error:  # noqa: BLE001  (every route failure is reported with what was tried)
        lines = "\n".join(f"  - {name}: {line}" for name, line in [*traced.failures, (route, first_line(error))])
        raise DeosCompileError(f"the graph was traced ({traced.tracer}) with a STATIC sequence length at `{stack.prefix}`, "
                               f"baked into every later reshape, and no route re-binds it; tried:\n{lines}", HINT) from error
    retraced = TracedModel(gm, target.route, mounted, target.call.tensors(), {}, symbolic_dims(gm), list(traced.failures))
    span = block_map.spans.get(stack.role or "")
    roles = {stack.role: stack.prefix} if stack.role else {}
    spans = {stack.role: span} if stack.role and span else {}
    return Retraced(retraced, roles, spans, model, target, blocks)
