"""The FLOPs registry: one sympy formula per ATen op, over the symbolic shapes of its arguments.

Counting conventions (every report states them):
- a matrix product `[M, K] @ [K, N]` is `2*M*K*N` (a multiply and an add per term: the
  convention of `torch.utils.flop_counter`); `linear`, `mm`, `addmm`, `bmm`, `baddbmm`,
  `matmul` and `_scaled_mm` are `2 * K * numel(output)`, bias additions are not counted;
- `einsum` is counted as the matrix products it lowers to, operands contracted left to right:
  each pairwise step that contracts a letter is `2 * prod(sizes of the letters it multiplies)`
  (one without a contracted letter is a broadcast product, not a matmul);
- a convolution is `2 * numel(output) * C_in/groups * prod(kernel)` (transposed: over the
  input positions), as `torch.utils.flop_counter` counts it;
- attention (`scaled_dot_product_attention` and its CPU / CUDA kernels) is `Q K^T` plus `A V`:
  `2 * B*H * pairs * (d_qk + d_v)`, with `pairs = L_q * L_k`; with causal halving on, an
  attention called `is_causal` counts `L_q * (L_q + 1) / 2` pairs (square prefill attention;
  an explicit mask tensor is counted dense);
- in the "all ops" mode also: pointwise arithmetic 1 per output element, softmax 5 per element
  (max, subtract, exp, sum, divide), layer / group / batch norm 5 and RMS norm 4 per input
  element, reductions 1 per input element, and inside attention the scale and the softmax of
  the scores (6 per pair and head). Comparisons, selections, copies and reshapes are free.
`FLOPS[name] = (kind, formula)`; `formula(call, out, conventions)` is a sympy expression.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import sympy

from .shapes import ATTENTIONS, CONVOLUTIONS, MATMULS, Call, Dims, einsum_letters

Expr = sympy.Expr
SOFTMAX = 5  # max, subtract, exp, sum, divide
NORM, RMS_NORM = 5, 4
MATMUL, CONV, ATTENTION = "matmul", "conv", "attention"
POINTWISE, REDUCTION = "pointwise", "reduction"


@dataclass(frozen=True)
class Conventions:
    """What is counted: causal attention halved or not, matmul-family only or all ops."""

    causal_halving: bool = False
    all_ops: bool = False

    def describe(self) -> list[str]:
        """The conventions in words (one line each), as reports print them."""
        return [
            "matmul [M,K]@[K,N] = 2*M*K*N (multiply + add per term; bias additions not counted)",
            "attention = Q K^T + A V = 2*B*H*L_q*L_k*(d_qk + d_v)",
            f"causal halving: {'on (is_causal attention counts L_q*(L_q+1)/2 pairs)' if self.causal_halving else 'off'}",
            "ops counted: " + ("all (pointwise 1, softmax 5, norm 5 / RMS norm 4 per element, reductions 1)"
                               if self.all_ops else "matmul family, convolution, attention"),
        ]


def _first(call: Call, *indices: int) -> Dims:
    return next(call.args[i] for i in indices if i < len(call.args) and isinstance(call.args[i], Dims))


def matmul(call: Call, out: Any, conventions: Conventions) -> Expr:
    left = _first(call, 1) if call.name in ("addmm", "baddbmm") else _first(call, 0)
    return 2 * left.exprs[-1] * out.numel()


def einsum(call: Call, out: Any, conventions: Conventions) -> Expr:
    letters = einsum_letters(call)
    if letters is None:
        raise ValueError("einsum with `...` is not supported")
    sizes, output = letters
    terms = call.args[0].replace(" ", "").partition("->")[0].split(",")
    total: Expr = sympy.Integer(0)
    current = set(terms[0])
    for i, term in enumerate(terms[1:], 1):
        later = set(output).union(*terms[i + 1:])
        contracted = (current & set(term)) - later
        if contracted:  # without a contracted letter the step is a broadcast product, not a matmul
            used = (current & set(term)) | ((current | set(term)) & later)
            total += 2 * sympy.Mul(*(sizes[c] for c in used))
        current = (current | set(term)) & later
    return total


def convolution(call: Call, out: Any, conventions: Conventions) -> Expr:
    x, w = call.args[0], call.args[1]
    transposed = call.name.startswith("conv_transpose") or (
        call.name in ("convolution", "_convolution", "convolution_overrideable") and bool(call.arg(6, "transposed")))
    if transposed:
        return 2 * x.exprs[0] * sympy.Mul(*x.exprs[2:]) * sympy.Mul(*w.exprs)
    return 2 * out.numel() * sympy.Mul(*w.exprs[1:])


# where `is_causal` sits in each attention op: (position, keyword)
CAUSAL = {
    "scaled_dot_product_attention": (5, "is_causal"), "_scaled_dot_product_attention_math": (5, "is_causal"),
    "_scaled_dot_product_flash_attention_for_cpu": (4, "is_causal"),
    "_scaled_dot_product_flash_attention": (4, "is_causal"),
    "_scaled_dot_product_efficient_attention": (6, "is_causal"),
    "_scaled_dot_product_cudnn_attention": (6, "is_causal"),
    "_flash_attention_forward": (8, "is_causal"), "_efficient_attention_forward": (9, "custom_mask_type"),
}
TOKEN_MAJOR = ("_flash_attention_forward", "_efficient_attention_forward")  # [B, L, H, d] layout


def attention(call: Call, out: Any, conventions: Conventions) -> Expr:
    q, k, v = call.args[0], call.args[1], call.args[2]
    if call.name in TOKEN_MAJOR:
        heads, lq, lk = q.exprs[0] * q.exprs[2], q.exprs[1], k.exprs[1]
    else:
        heads, lq, lk = sympy.Mul(*q.exprs[:-2]), q.exprs[-2], k.exprs[-2]
    causal = bool(call.arg(*CAUSAL[call.name], default=False))
    pairs = lq * (lq + 1) / 2 if conventions.causal_halving and causal else lq * lk
    flops = 2 * heads * pairs * (q.exprs[-1] + v.exprs[-1])
    if conventions.all_ops:
        flops += (1 + SOFTMAX) * heads * pairs
    return flops


def per_element(weight: int, of_input: bool = False) -> Callable[[Call, Any, Conventions], Expr]:
    """`weight` FLOPs per element of the output (or of the first tensor input)."""

    def formula(call: Call, out: Any, conventions: Conventions) -> Expr:
        dims = call.tensors()[0] if of_input else out
        return weight * dims.numel()

    return formula


POINTWISE_OPS = ("add", "sub", "rsub", "mul", "div", "neg", "pow", "rsqrt", "sqrt", "exp", "log", "reciprocal",
                 "square", "abs", "tanh", "sigmoid", "gelu", "silu", "relu", "erf", "clamp", "clamp_min", "clamp_max",
                 "addcmul", "addcdiv", "lerp", "hardtanh", "softplus", "elu", "leaky_relu", "mish", "hardswish",
                 "cos", "sin", "log1p", "expm1")
NORMS = ("layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "batch_norm", "native_batch_norm",
         "_native_batch_norm_legit_no_training", "instance_norm")
REDUCE_OPS = ("sum", "mean", "amax", "amin", "prod", "var", "std", "norm", "linalg_vector_norm", "logsumexp")

Formula = Callable[[Call, Any, Conventions], Expr]
FLOPS: dict[str, tuple[str, Formula]] = {
    **dict.fromkeys(MATMULS, (MATMUL, matmul)),
    "einsum": (MATMUL, einsum),
    **dict.fromkeys(CONVOLUTIONS, (CONV, convolution)),
    **dict.fromkeys(ATTENTIONS, (ATTENTION, attention)),
}
ALL_OPS: dict[str, tuple[str, Formula]] = {
    **dict.fromkeys(POINTWISE_OPS, (POINTWISE, per_element(1))),
    **dict.fromkeys(("softmax", "_softmax", "log_softmax", "_log_softmax"), ("softmax", per_element(SOFTMAX))),
    **dict.fromkeys(NORMS, ("norm", per_element(NORM, of_input=True))),
    **dict.fromkeys(("rms_norm", "_fused_rms_norm"), ("norm", per_element(RMS_NORM, of_input=True))),
    **dict.fromkeys(REDUCE_OPS, (REDUCTION, per_element(1, of_input=True))),
}


def flops(call: Call, out: Any, conventions: Conventions) -> tuple[str, Expr] | None:
    """`(kind, FLOPs)` of `call` with output `out`, or None for an op that costs nothing."""
    name = call.name.rstrip("_") if call.name.endswith("_") and not call.name.startswith("_") else call.name
    entry = FLOPS.get(name) or (ALL_OPS.get(name) if conventions.all_ops else None)
    if entry is None or not call.tensors():
        return None
    kind, formula = entry
    return kind, sympy.sympify(formula(call, out[0] if isinstance(out, list) else out, conventions))


def operator_flops(batch: Expr, entering: Expr, leaving: Expr, fused: int, features: Expr, width: Expr,
                   transfers: bool = True) -> Expr:
    """Matmul FLOPs of one hard site (`reduce_tokens`): the cosine affinity of the `entering`
    reducible tokens to the `leaving - fused` destinations over `features` dims, and the
    transfer of the entering tokens into the `leaving` ones over the model `width`; none for a
    site that transfers nothing (`gamma = 0`: a prune, a reweighting)."""
    if not transfers:
        return sympy.Integer(0)
    return 2 * batch * entering * (leaving - fused) * features + 2 * batch * leaving * entering * width
