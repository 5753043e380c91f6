"""The block map: transformer blocks, their residual stream, roles, spans and side tensors.

Built from a `TracedModel` only through `nn_module_stack` and `meta['val']`:
- a BLOCK is a repeated child `P.<i>` of a module list `P` (`vision.layers.0`,
  `model.language_model.layers.3`); a node belongs to the OUTERMOST block on its module stack,
  and the blocks of one `P` form a STACK ordered by index;
- the STREAM of a block is its single `[B, N, D]` tensor produced outside and consumed inside
  (`entry`) and the same-shaped tensor produced inside and consumed outside (`exit`, the last
  in graph order): a site "at the output of block b" is `b.exit`;
- SIDE TENSORS are the other tensor inputs of a block with a dimension (past the batch) equal
  to the stream's N (RoPE cos/sin, masks, position ids); LENGTH READS are SymInt inputs (the
  sequence length read from a graph input: the KNOWN TRAP of DESIGN section 3);
- ROLES by structure: `vision` = the first stack fed by an image input (a 4-D float
  placeholder, or a `pixel_*` input of another rank: flattened patches, several images),
  `decoder` = the last stack that is not `vision`, `projector` = the outermost module on the
  dataflow from the vision stack to the decoder stack (names with `proj` / `connector` /
  `merger` / `adapter` first, then most nodes); `roles=` overrides any of them
  (a `projector` override also admits a graph of the projector alone, without any stack);
- the reducible SPAN `[start, end)` of each role's stream (before any reduction): the model's
  `visual_span`, or the image-token positions of `input_ids` (HF LLaVA); for vision encoders
  the patch tokens (the tokens concatenated around them: CLS, distillation or register tokens,
  are not reducible); the whole projector output; `spans=` overrides any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import networkx as nx
import torch
from torch import fx, nn
from torch.fx.experimental import symbolic_shapes

from deos_dsl.frontend.diagnostics import suggest

from .errors import BlockMapError
from .trace import GUARDS, TracedModel

Span = tuple[int, int]
PSEUDO_MODULES = ("_empty_nn_module_stack_from_metadata_hook",)
PROJECTOR_WORDS = ("proj", "connector", "merger", "adapter")
CONV_OPS = ("aten.conv2d", "aten.convolution", "conv2d")
CAT_OPS = (torch.ops.aten.cat.default, torch.cat)


def module_paths(node: fx.Node) -> list[str]:
    """The module paths on `node`'s `nn_module_stack`, outermost first (the root `''` dropped)."""
    stack = node.meta.get("nn_module_stack") or {}
    return [path for path, _ in stack.values() if path and path not in PSEUDO_MODULES]


def module_types(nodes: Iterable[fx.Node]) -> dict[str, str]:
    """`path -> type name` of every module seen on the nodes' stacks."""
    types: dict[str, str] = {}
    for node in nodes:
        for path, kind in (node.meta.get("nn_module_stack") or {}).values():
            types.setdefault(path, kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}")
    return types


def shape_of(node: fx.Node) -> tuple[str, ...]:
    """`meta['val'].shape` as strings (symbols print as their name, e.g. `s29`)."""
    return tuple(str(size) for size in node.meta["val"].shape)


def is_tensor(node: Any) -> bool:
    return isinstance(node, fx.Node) and isinstance(node.meta.get("val"), torch.Tensor)


def _stream_like(node: fx.Node) -> bool:
    return is_tensor(node) and node.meta["val"].ndim == 3


@dataclass(frozen=True)
class SideTensor:
    """A sequence-aligned block input: `kind` is `mask`, `position_ids` or `positional` (cos/sin)."""

    node: fx.Node
    shape: tuple[str, ...]
    kind: str


@dataclass
class Block:
    """One block: `entry`/`exit` are the stream nodes `[B, N, D]` crossing its boundary."""

    path: str
    stack: str
    index: int
    entry: fx.Node
    exit: fx.Node
    nodes: list[fx.Node]
    side: list[SideTensor] = field(default_factory=list)
    length_reads: list[fx.Node] = field(default_factory=list)
    role: str | None = None

    @property
    def shape(self) -> tuple[str, ...]:
        """The stream shape `[B, N, D]` at the block output."""
        return shape_of(self.exit)


@dataclass
class Stack:
    """The blocks of one module list, in index order, with their role."""

    prefix: str
    blocks: list[Block]
    role: str | None = None


@dataclass
class BlockMap:
    """Stacks, the projector, reducible spans per role and a node -> block lookup of one graph."""

    traced: TracedModel
    stacks: list[Stack]
    projector: Block | None
    owner: dict[fx.Node, Block]
    module_paths: list[str]
    spans: dict[str, Span | None] = field(default_factory=dict)

    @property
    def graph_module(self) -> fx.GraphModule:
        return self.traced.graph_module

    def block_of(self, node: fx.Node) -> Block | None:
        """The block `node` belongs to (its outermost block or the projector), or None."""
        return self.owner.get(node)

    def blocks(self) -> list[Block]:
        """Every block, stacks in graph order then the projector."""
        return [b for stack in self.stacks for b in stack.blocks] + ([self.projector] if self.projector else [])

    def stack(self, role: str) -> Stack | None:
        """The stack playing `role` (`vision` / `decoder`), if the model has one."""
        return next((stack for stack in self.stacks if stack.role == role), None)

    @property
    def vision_feeds_decoder(self) -> bool:
        """Whether the vision stack's reducible span is as long as the decoder's visual span
        (a LLaVA-style 1:1 projector): the tokens a vision site leaves are the decoder's."""
        vision, decoder = self.stack("vision"), self.stack("decoder")
        lengths = {role: span[1] - span[0] for role, span in self.spans.items() if span is not None}
        return vision is not None and decoder is not None and "vision" in lengths and lengths["vision"] == lengths.get("decoder")

    def role_lists(self) -> dict[str, list[Block]]:
        """`vision.layers` / `decoder.layers` / `projector` -> the blocks they index."""
        lists = {f"{stack.role}.layers": stack.blocks for stack in self.stacks if stack.role}
        if self.projector is not None:
            lists["projector"] = [self.projector]
        return lists


# ---- discovery ----------------------------------------------------------------------------


def _split_index(path: str) -> tuple[str, int] | None:
    prefix, _, last = path.rpartition(".")
    return (prefix, int(last)) if prefix and last.isdigit() else None


def _stack_prefixes(types: dict[str, str], root: nn.Module | None) -> set[str]:
    """Module lists: a `ModuleList` of `root`, or (without root) >= 2 same-type indexed children."""
    children: dict[str, list[str]] = {}
    for path, kind in types.items():
        split = _split_index(path)
        if split:
            children.setdefault(split[0], []).append(kind)
    prefixes = set()
    for prefix, kinds in children.items():
        try:
            is_list = isinstance(root.get_submodule(prefix), nn.ModuleList) if root is not None else None
        except AttributeError:
            is_list = None
        if is_list or (is_list is None and len(kinds) >= 2 and len(set(kinds)) == 1):
            prefixes.add(prefix)
    return prefixes


def _members(nodes: list[fx.Node], prefixes: set[str]) -> dict[str, list[fx.Node]]:
    """`block path -> its nodes` (each node in its outermost block)."""
    members: dict[str, list[fx.Node]] = {}
    for node in nodes:
        for path in module_paths(node):
            split = _split_index(path)
            if split and split[0] in prefixes:
                members.setdefault(path, []).append(node)
                break
    return members


def _boundary(inside: list[fx.Node]) -> tuple[list[fx.Node], list[fx.Node]]:
    """(entries, exits) of a node set, in graph order; parameters (get_attr) are not entries."""
    members = set(inside)
    entries: dict[fx.Node, None] = {}
    for node in inside:
        for arg in node.all_input_nodes:
            if arg not in members and arg.op != "get_attr":
                entries.setdefault(arg)
    exits = [node for node in inside if any(user not in members for user in node.users)]
    return list(entries), exits


def _stream(path: str, inside: list[fx.Node], previous: fx.Node | None) -> tuple[fx.Node, fx.Node, list[fx.Node]]:
    """(entry, exit, other entries) of a residual block; raises `BlockMapError` if ambiguous."""
    entries, exits = _boundary(inside)
    exit_shapes = {shape_of(node) for node in exits if _stream_like(node)}
    candidates = [node for node in entries if _stream_like(node) and shape_of(node) in exit_shapes]
    if previous in candidates:
        candidates = [previous]
    if len(candidates) != 1:
        names = ", ".join(f"{n.name} {list(shape_of(n))}" for n in candidates) or "none"
        raise BlockMapError(f"block `{path}`: no single residual stream [B, N, D] enters and leaves it "
                            f"(candidates: {names})", "pass the block's stream explicitly or report the model")
    entry = candidates[0]
    exit_ = [node for node in exits if _stream_like(node) and shape_of(node) == shape_of(entry)][-1]
    return entry, exit_, [node for node in entries if node is not entry]


def _side_kind(node: fx.Node, length: str) -> str | None:
    val = node.meta["val"]
    hits = sum(str(size) == length for size in val.shape[1:])
    if not hits:
        return None
    if val.dtype == torch.bool or hits >= 2:
        return "mask"
    return "position_ids" if not val.is_floating_point() else "positional"


def _annotate_inputs(block: Block, others: list[fx.Node]) -> None:
    length = block.shape[1]
    for node in others:
        if is_tensor(node):
            kind = _side_kind(node, length)
            if kind:
                block.side.append(SideTensor(node, shape_of(node), kind))
        elif isinstance(node.meta.get("val"), torch.SymInt):
            block.length_reads.append(node)


def _build_stacks(members: dict[str, list[fx.Node]]) -> list[Stack]:
    grouped: dict[str, list[tuple[int, str]]] = {}
    for path in members:
        prefix, index = _split_index(path)  # type: ignore[misc]
        grouped.setdefault(prefix, []).append((index, path))
    stacks = []
    for prefix, items in grouped.items():
        blocks: list[Block] = []
        for index, path in sorted(items):
            entry, exit_, others = _stream(path, members[path], blocks[-1].exit if blocks else None)
            block = Block(path, prefix, index, entry, exit_, members[path])
            _annotate_inputs(block, others)
            blocks.append(block)
        stacks.append(Stack(prefix, blocks))
    return stacks


# ---- roles --------------------------------------------------------------------------------


def dataflow(gm: fx.GraphModule) -> nx.DiGraph:
    """The graph's def-use edges as a networkx DiGraph (node -> user)."""
    graph = nx.DiGraph()
    graph.add_nodes_from(gm.graph.nodes)
    graph.add_edges_from((node, user) for node in gm.graph.nodes for user in node.users)
    return graph


def _image_inputs(gm: fx.GraphModule) -> list[fx.Node]:
    """Float inputs that hold images: `[B, C, H, W]`, or an input named `pixel_*` of another rank
    (flattened patches `[B, P, C*p*p]` / `[P, C*p*p]`, several images per example `[B, I, C, H, W]`)."""
    return [node for node in gm.graph.find_nodes(op="placeholder")
            if is_tensor(node) and node.meta["val"].is_floating_point()
            and (node.meta["val"].ndim == 4 or (node.meta["val"].ndim in (2, 3, 5) and "pixel" in node.name))]


def _match_prefix(stacks: list[Stack], prefix: str) -> Stack | None:
    return next((s for s in stacks if s.prefix == prefix or s.prefix.startswith(prefix + ".")), None)


def _assign_roles(stacks: list[Stack], flow: nx.DiGraph, images: list[fx.Node], roles: dict[str, str]) -> None:
    """Set `Stack.role` for `vision` and `decoder`: the `roles` overrides, else by structure
    (`decoder` = the last stack that is not the vision one)."""
    prefixes = [s.prefix for s in stacks]
    auto: dict[str, Stack | None] = {}
    for role in ("vision", "decoder"):
        if role in roles:
            auto[role] = _match_prefix(stacks, roles[role])
            if auto[role] is None:
                raise BlockMapError(f"role override `{role}` -> `{roles[role]}` matches no block stack",
                                    suggest(roles[role], prefixes) or f"block stacks: {', '.join(prefixes)}")
    fed = [s for s in stacks if s not in auto.values() and any(image in nx.ancestors(flow, s.blocks[0].entry)
                                                               for image in images)]
    auto.setdefault("vision", fed[0] if fed else None)
    rest = [s for s in stacks if s is not auto["vision"]]
    auto.setdefault("decoder", rest[-1] if rest else None)
    for role, stack in auto.items():
        if stack is not None:
            stack.role = role
            for block in stack.blocks:
                block.role = role


def _projector_path(stacks: list[Stack], flow: nx.DiGraph) -> str | None:
    """The outermost non-stack module on the dataflow from the vision to the decoder stack."""
    by_role = {s.role: s for s in stacks if s.role}
    if "vision" not in by_role or "decoder" not in by_role:
        return None
    entry = by_role["decoder"].blocks[0].entry
    starts = [b.exit for b in by_role["vision"].blocks]
    between = set().union(*(nx.descendants(flow, n) for n in starts)) & (nx.ancestors(flow, entry) | {entry})
    prefixes = [s.prefix for s in stacks]
    counts: dict[str, int] = {}
    for node in between:
        for path in module_paths(node):
            if not any(p == path or p.startswith(path + ".") or path.startswith(p + ".") for p in prefixes):
                counts[path] = counts.get(path, 0) + 1
                break
    if not counts:
        return None
    return max(counts, key=lambda p: (any(w in p.rpartition(".")[2] for w in PROJECTOR_WORDS), counts[p]))


def _projector(nodes: list[fx.Node], path: str) -> Block | None:
    inside = [n for n in nodes if path in module_paths(n)]
    entries, exits = _boundary(inside)
    entry = next((n for n in entries if _stream_like(n)), None)
    outs = [n for n in exits if _stream_like(n)]
    if entry is None or not outs:
        return None
    return Block(path, path, 0, entry, outs[-1], inside, role="projector")


# ---- spans --------------------------------------------------------------------------------


def _token_span(root: nn.Module | None, traced: TracedModel) -> Span | None:
    """The model's `visual_span`, or the image-token positions in `input_ids` (row 0)."""
    span = getattr(root, "visual_span", None)
    if isinstance(span, tuple):
        return span
    config = getattr(root, "config", None)
    token = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    ids = traced.kwargs.get("input_ids")
    if token is None or not isinstance(ids, torch.Tensor) or ids.is_meta:
        return None
    positions = (ids[0] == token).nonzero().flatten().tolist()
    if not positions or positions != list(range(positions[0], positions[-1] + 1)):
        return None
    return (positions[0], positions[-1] + 1)


def _is_conv(node: fx.Node) -> bool:
    """An ATen convolution, or (fx.symbolic_trace) a call to a Conv module."""
    if not is_tensor(node):
        return False
    if node.op == "call_module":
        kinds = list((node.meta.get("nn_module_stack") or {}).values())
        return bool(kinds) and "Conv" in str(kinds[-1][1])
    return str(node.target).startswith(CONV_OPS)


# torch >= 2.12 spells "the hint, or raise when data-dependent" `guarding_hint_or_throw` (and warns
# on the older `ShapeEnv.size_hint`); the GPU machines' torch 2.11 has only the older spelling.
GUARDING_HINT = getattr(symbolic_shapes, "guarding_hint_or_throw", None)


def example_size(size: int | torch.SymInt) -> int:
    """A size at the example inputs (its dense value), without adding a guard on a symbolic one;
    raises `GuardOnDataDependentSymNode` for a data-dependent size (no hint)."""
    if not isinstance(size, torch.SymInt):
        return int(size)
    if GUARDING_HINT is None:
        return int(size.node.shape_env.size_hint(size.node.expr))
    return int(GUARDING_HINT(size))


def _is_token_cat(node: fx.Node, length: int) -> bool:
    """A concatenation whose output has `length` tokens on axis 1 (prefix tokens + patches)."""
    if not is_tensor(node) or node.target not in CAT_OPS or not isinstance(node.args[0], (list, tuple)):
        return False
    value = node.meta["val"]
    axis = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return value.ndim == 3 and axis in (1, -2) and example_size(value.shape[1]) == length


def _patch_span(stack: Stack, flow: nx.DiGraph) -> Span | None:
    """Patch tokens of a vision stream: the part of the token concatenation that comes from the
    patch embedding, `patches` long (CLS, distillation and register tokens around it are not
    reducible); the whole stream when no concatenation adds tokens to the patches (a stream of
    patches alone, or flattened patches embedded by a linear layer)."""
    entry = stack.blocks[0].entry
    length = example_size(entry.meta["val"].shape[1])  # a dynamic number of patches: the example's
    ancestors = nx.ancestors(flow, entry) | {entry}  # the concatenation may itself enter the first block
    order = {node: i for i, node in enumerate(entry.graph.nodes)}
    cats = sorted((n for n in ancestors if _is_token_cat(n, length)), key=order.__getitem__)
    convs = [n for n in ancestors if _is_conv(n) and n.meta["val"].ndim == 4]
    if not cats:
        return (0, length)
    if not convs:
        return None
    conv = max(convs, key=order.__getitem__)  # the patch embedding: the last convolution before the stream
    patches = example_size(conv.meta["val"].shape[2]) * example_size(conv.meta["val"].shape[3])
    offset = 0
    for part in cats[-1].args[0]:
        size = example_size(part.meta["val"].shape[1])
        if size == patches and (part is conv or conv in nx.ancestors(flow, part)):
            return (offset, offset + patches)
        offset += size
    return None


# ---- entry point --------------------------------------------------------------------------


def build_block_map(traced: TracedModel, roles: dict[str, str] | None = None,
                    spans: dict[str, Span] | None = None) -> BlockMap:
    """Discover the blocks of `traced` (see the module docstring); raises `BlockMapError`.

    `roles` maps `vision` / `decoder` / `projector` to a module-path prefix; `spans` maps a role
    to its reducible span `[start, end)`; both override what is inferred.
    """
    roles, spans = dict(roles or {}), dict(spans or {})
    gm = traced.graph_module
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr") and n.target != GUARDS]
    types = module_types(nodes)
    members = _members(nodes, _stack_prefixes(types, traced.root))
    if not members and "projector" not in roles:  # a graph of the projector alone has no stack
        raise BlockMapError("no transformer blocks found: no module list with repeated children "
                            "(`layers.0`, `layers.1`, ...) appears on the nodes' nn_module_stack",
                            "trace a model whose blocks live in an nn.ModuleList")
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    stacks = sorted(_build_stacks(members), key=lambda s: order[s.blocks[0].entry])
    flow = dataflow(gm)
    _assign_roles(stacks, flow, _image_inputs(gm), roles)
    path = roles.get("projector") or _projector_path(stacks, flow)
    projector = _projector(nodes, path) if path else None
    if "projector" in roles and projector is None:
        raise BlockMapError(f"role override `projector` -> `{path}` is not a module with a [B, N, D] output",
                            suggest(path, types) if path else None)
    found = {s.role: s for s in stacks if s.role}
    if "vision" in found:
        spans.setdefault("vision", _patch_span(found["vision"], flow))
    if "decoder" in found:
        spans.setdefault("decoder", _token_span(traced.root, traced))
    if projector is not None and projector.shape[1].isdigit():
        spans.setdefault("projector", (0, int(projector.shape[1])))
    owner = {node: block for stack in stacks for block in stack.blocks for node in block.nodes}
    if projector is not None:
        owner.update({node: projector for node in projector.nodes if node not in owner})
    return BlockMap(traced, stacks, projector, owner, sorted(types), spans)
