"""What an fx node computes, as an ATen op name with ATen-ordered arguments (a `Call`).

- `call_function` of an ATen op: its name (`aten.linear.default` -> `linear`);
- `call_function` of a Python function torch.fx keeps (`torch.matmul`, `operator.add`,
  `F.scaled_dot_product_attention`, ...): the ATen op of the same meaning (`FUNCTIONS`);
- `call_method`: the ATen op of the method's name, size varargs packed (`x.view(b, n, d)`);
  `x.size(d)` and `getattr(x, "shape")` read sizes (`sym_size`);
- `call_module` of a torch.nn layer (`Linear`, `Conv*d`, norms, activations, `Embedding`):
  the ATen op it calls, with its parameters' shapes as constant `Dims`.
Anything else returns None: the caller lowers it to ATen ops (`lower`) and costs those.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from .shapes import Call, Dims, SCALAR_OPS, hint

FUNCTIONS: dict[Callable[..., Any], str] = {
    torch.matmul: "matmul", operator.matmul: "matmul", torch.mm: "mm", torch.bmm: "bmm", torch.addmm: "addmm",
    torch.baddbmm: "baddbmm", torch.einsum: "einsum", F.linear: "linear",
    F.scaled_dot_product_attention: "scaled_dot_product_attention",
    F.conv1d: "conv1d", F.conv2d: "conv2d", F.conv3d: "conv3d",
    F.conv_transpose1d: "conv_transpose1d", F.conv_transpose2d: "conv_transpose2d",
    F.conv_transpose3d: "conv_transpose3d",
    torch.cat: "cat", torch.concat: "cat", torch.stack: "stack", torch.flatten: "flatten", torch.transpose: "transpose",
    torch.permute: "permute", torch.reshape: "reshape", torch.squeeze: "squeeze", torch.unsqueeze: "unsqueeze",
    torch.split: "split", torch.chunk: "chunk", torch.unbind: "unbind", torch.narrow: "narrow", torch.gather: "gather",
    torch.index_select: "index_select", torch.topk: "topk", torch.movedim: "movedim",
    torch.arange: "arange", torch.zeros: "zeros", torch.ones: "ones", torch.full: "full", torch.empty: "empty",
    torch.zeros_like: "zeros_like", torch.ones_like: "ones_like", torch.full_like: "full_like",
    torch.sum: "sum", torch.mean: "mean", torch.amax: "amax", torch.softmax: "softmax", F.softmax: "softmax",
    F.log_softmax: "log_softmax", F.layer_norm: "layer_norm", F.group_norm: "group_norm", F.gelu: "gelu",
    F.relu: "relu", F.silu: "silu", torch.tanh: "tanh", torch.sigmoid: "sigmoid", torch.exp: "exp",
    torch.rsqrt: "rsqrt", F.dropout: "dropout", torch.where: "where", torch.add: "add", torch.mul: "mul",
    torch.sub: "sub", torch.div: "div", torch.neg: "neg",
    operator.add: "add", operator.sub: "sub", operator.mul: "mul", operator.truediv: "div",
    operator.floordiv: "floordiv", operator.neg: "neg", operator.mod: "mod",
    torch.sym_max: "sym_max", torch.sym_min: "sym_min",
}
VARARG_METHODS = ("view", "reshape", "permute", "expand", "repeat", "tile", "new_zeros", "new_ones", "new_empty")
ACTIVATIONS: dict[type[nn.Module], str] = {
    nn.GELU: "gelu", nn.ReLU: "relu", nn.SiLU: "silu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
    nn.Dropout: "clone", nn.Identity: "clone",
}


def op_name(target: Any) -> str | None:
    """The ATen name of an `OpOverload` / `OpOverloadPacket` target, else None."""
    if isinstance(target, torch._ops.OpOverload):
        return target._opname
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target.__name__
    return None


def _param(tensor: torch.Tensor | None) -> Dims | None:
    return None if tensor is None else Dims.constant(tensor.shape)


def _module_call(module: nn.Module, args: tuple[Any, ...]) -> Call | None:
    x = args[0] if args else None
    if isinstance(module, nn.Linear):
        return Call("linear", (x, _param(module.weight), _param(module.bias)))
    if isinstance(module, nn.modules.conv._ConvNd):
        return Call("convolution", (x, _param(module.weight), _param(module.bias), module.stride, module.padding,
                                    module.dilation, module.transposed, module.output_padding, module.groups))
    if isinstance(module, nn.LayerNorm):
        return Call("layer_norm", (x, module.normalized_shape))
    if isinstance(module, nn.GroupNorm):
        return Call("group_norm", (x, module.num_groups))
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return Call("batch_norm", (x,))
    if isinstance(module, nn.RMSNorm):
        return Call("rms_norm", (x, module.normalized_shape))
    if isinstance(module, nn.Embedding):
        return Call("embedding", (_param(module.weight), x))
    if isinstance(module, nn.Softmax):
        return Call("softmax", (x, module.dim))
    kind = ACTIVATIONS.get(type(module))
    return Call(kind, (x,)) if kind else None


def to_call(gm: fx.GraphModule, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call | None:
    """The `Call` of `node` with its arguments already abstract (module docstring), or None."""
    if node.op == "call_module":
        return _module_call(gm.get_submodule(str(node.target)), args)
    if node.op == "call_method":
        name = str(node.target)
        if name == "size":
            return Call("sym_size", args[:1], {"dim": args[1] if len(args) > 1 else kwargs.get("dim")})
        if name in VARARG_METHODS and len(args) > 1 and not isinstance(args[1], (list, tuple)):
            args = (args[0], list(args[1:]))
        if name.endswith("_") and not name.startswith("_"):
            name = name[:-1]
        return Call(name, args, kwargs) if hasattr(torch.ops.aten, name) else None
    target = node.target
    name = op_name(target)
    if name is not None:
        return Call(name, args, kwargs)
    if target is getattr and args[1] == "shape":
        return Call("sym_size", args[:1])
    if target is operator.getitem and isinstance(args[0], Dims):
        return Call("getitem_tensor", args)
    if target is F.embedding:
        return Call("embedding", (args[1], args[0]), kwargs)
    name = FUNCTIONS.get(target) if callable(target) else None
    if name == "einsum" and not isinstance(args[1], (list, tuple)):
        args = (args[0], list(args[1:]))
    if name in SCALAR_OPS and not any(isinstance(a, Dims) for a in args):
        return Call(name, args, kwargs)
    return Call(name, args, kwargs) if name else None


def lower(function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[fx.GraphModule, list[int]]:
    """`function(*args, **kwargs)` traced to ATen ops (`make_fx`) on fake tensors of the shapes
    of `args` / `kwargs` (whose tensors are `meta['val']`s); returns the graph, whose
    placeholders are the tensor leaves of the arguments in order, and their leaf positions."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        fakes = [torch.empty([hint(s) for s in leaves[i].shape], dtype=leaves[i].dtype, device=leaves[i].device)
                 for i in positions]

    def run(*tensors: torch.Tensor) -> Any:
        filled = list(leaves)
        for i, tensor in zip(positions, tensors):
            filled[i] = tensor
        call_args, call_kwargs = pytree.tree_unflatten([hint(x) if isinstance(x, torch.SymInt) else x for x in filled], spec)
        return function(*call_args, **call_kwargs)

    with mode:
        return make_fx(run)(*fakes), positions
