"""Small graph-editing helpers shared by the passes (DESIGN 3, "Graph editing").

- `sdpa_nodes` / `sdpa_argument` / `set_sdpa_argument`: read and rewrite the arguments of a
  scaled-dot-product-attention node by NAME, whether it is the ATen op of an exported graph or
  `F.scaled_dot_product_attention` of a symbolically traced one (same signature);
- `insert_after` / `insert_before`: a new node next to an anchor, with the anchor's `nn_module_stack`;
- `redirect_uses`: every use of `old` now reads `new`, except `new` itself (no self-loop);
- `call_on_stream`: a site submodule called on a stream, its outputs unpacked, the stream's
  later uses moved to its first output;
- `add_key_bias`: an attention node also adds a key bias `[B, N]` to its logits;
- `refresh`: `lint()`, `recompile()` and fake-tensor propagation of the whole graph.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx
from torch._guards import detect_fake_mode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from deos_dsl.errors import DeosCompileError, first_line

from .masking import key_logits, key_mask
from .trace import GUARDS, TracedModel, propagate

SDPA_TARGETS = (torch.ops.aten.scaled_dot_product_attention.default, F.scaled_dot_product_attention)
SDPA_PARAMETERS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
SDPA_DEFAULTS: dict[str, Any] = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


def is_sdpa(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in SDPA_TARGETS


def sdpa_nodes(nodes: list[fx.Node]) -> list[fx.Node]:
    """The attention nodes among `nodes`, in the given order."""
    return [node for node in nodes if is_sdpa(node)]


SOFTMAX_TARGETS = (torch.ops.aten._softmax.default, torch.ops.aten.softmax.int, F.softmax, torch.softmax)


def is_softmax(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in SOFTMAX_TARGETS) or \
        (node.op == "call_method" and node.target == "softmax")


def eager_attention_nodes(nodes: list[fx.Node]) -> list[fx.Node]:
    """The attention probabilities `[B, H, Nq, Nk]` of attention written as matmul + softmax
    (an HF model with `attn_implementation="eager"`, Gemma2's soft-capping): 4-D softmax nodes."""
    return [node for node in nodes if is_softmax(node) and "val" in node.meta and node.meta["val"].ndim == 4]


def add_logit_bias(softmax: fx.Node, bias: fx.Node) -> fx.Node:
    """Rewrite eager attention `softmax(logits)` to `softmax(logits + bias[:, None, None, :])`
    (`key_logits`); returns the new logits node (inserted right before `softmax`)."""
    with softmax.graph.inserting_before(softmax):
        logits = softmax.graph.call_function(key_logits, (softmax.args[0], bias))
    logits.meta["nn_module_stack"] = dict(softmax.meta.get("nn_module_stack", {}))
    softmax.update_arg(0, logits)
    return logits


def sdpa_argument(node: fx.Node, name: str) -> Any:
    """Argument `name` of an attention node (positional or keyword; its default if absent)."""
    index = SDPA_PARAMETERS.index(name)
    if index < len(node.args):
        return node.args[index]
    return node.kwargs.get(name, SDPA_DEFAULTS.get(name))


def set_sdpa_argument(node: fx.Node, name: str, value: Any) -> None:
    """Rewrite argument `name` of an attention node in place (where it is written now)."""
    index = SDPA_PARAMETERS.index(name)
    if index < len(node.args):
        node.update_arg(index, value)
    else:
        node.update_kwarg(name, value)


def insert_after(anchor: fx.Node, target: Callable[..., Any] | str, args: tuple[Any, ...],
                 kwargs: dict[str, Any] | None = None, op: str = "call_function") -> fx.Node:
    """A new `op` node right after `anchor`, carrying the anchor's `nn_module_stack`."""
    return _insert(anchor, anchor.graph.inserting_after(anchor), target, args, kwargs, op)


def insert_before(anchor: fx.Node, target: Callable[..., Any], args: tuple[Any, ...]) -> fx.Node:
    """A new call_function node right before `anchor`, carrying the anchor's `nn_module_stack`."""
    return _insert(anchor, anchor.graph.inserting_before(anchor), target, args, None, "call_function")


def _insert(anchor: fx.Node, place: Any, target: Callable[..., Any] | str, args: tuple[Any, ...],
            kwargs: dict[str, Any] | None, op: str) -> fx.Node:
    with place:
        node = anchor.graph.create_node(op, target, args, kwargs or {})
    if "nn_module_stack" in anchor.meta:
        node.meta["nn_module_stack"] = dict(anchor.meta["nn_module_stack"])
    return node


def redirect_uses(old: fx.Node, new: fx.Node, keep: Callable[[fx.Node], bool] = lambda user: False) -> None:
    """Every user of `old` except `new` itself (and users with `keep(user)`) now reads `new`;
    export's input-shape guards keep checking the graph's inputs as given (a stream that is an
    input, such as a language model's `inputs_embeds`)."""
    old.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new and not keep(user)
                              and user.target != GUARDS)


def call_on_stream(anchor: fx.Node, target: str, args: tuple[Any, ...], names: tuple[str, ...],
                   score: fx.Node | None, original: fx.Node,
                   keep: Callable[[fx.Node], bool] = lambda user: False) -> dict[str, fx.Node]:
    """Call submodule `target` on `args` (`args[0]` the stream, `args[1]` its score node) after
    `anchor`; returns `{"call": node, names[i]: output i}` with the outputs right after the call.

    A score computed on the site's `original` stream node is moved to read the current stream
    (and placed after `anchor`); every other use of the stream, except by the call, the score
    and `keep(user)`, now reads output `names[0]`.
    """
    stream = args[0]
    if score is not None and score.args[0] in (original, stream):
        score.update_arg(0, stream)
        anchor.append(score)
        anchor = score
    call = insert_after(anchor, target, args, op="call_module")
    outputs, last = {"call": call}, call
    for position, name in enumerate(names):
        last = outputs[name] = insert_after(last, operator.getitem, (call, position))
    redirect_uses(stream, outputs[names[0]], keep=lambda user: user is call or user is score or keep(user))
    return outputs


def add_key_bias(sdpa: fx.Node, bias: fx.Node) -> fx.Node:
    """Rewrite `sdpa` to `attn_mask = key_mask(bias, q, its mask, is_causal)`, `is_causal=False`;
    returns the new mask node (inserted right before `sdpa`)."""
    args = (bias, sdpa_argument(sdpa, "query"), sdpa_argument(sdpa, "attn_mask"), sdpa_argument(sdpa, "is_causal"))
    with sdpa.graph.inserting_before(sdpa):
        mask = sdpa.graph.call_function(key_mask, args)
    mask.meta["nn_module_stack"] = dict(sdpa.meta.get("nn_module_stack", {}))
    set_sdpa_argument(sdpa, "attn_mask", mask)
    set_sdpa_argument(sdpa, "is_causal", False)
    return mask


def refresh(traced: TracedModel) -> None:
    """`lint()`, `recompile()` and fake-tensor propagation (`meta['val']` of every node).

    Propagation runs in the graph's OWN fake mode on its placeholders' fake values when they
    have one (an exported graph: symbolic lengths stay symbols, unbacked values stay valid),
    else from the example inputs.

    Raises `DeosCompileError` when the edited graph cannot be propagated: an operation of the
    model's own that fake tensors cannot re-run (e.g. a `torch.vmap` the tracer kept).
    """
    gm = traced.graph_module
    gm.graph.lint()
    gm.recompile()
    inputs = [node.meta.get("val") for node in gm.graph.find_nodes(op="placeholder")]
    mode = detect_fake_mode([value for value in inputs if isinstance(value, torch.Tensor)])
    try:
        if mode is None:
            propagate(gm, traced.root, traced.args, traced.kwargs)
        else:
            FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*inputs)
    except Exception as error:  # noqa: BLE001  (any failure of the model's ops under fake tensors)
        raise DeosCompileError(f"the edited graph cannot be re-run on fake tensors: {first_line(error)[:300]}",
                               "the model's graph holds an operation that shape propagation cannot replay; "
                               "report the model with this line") from error
