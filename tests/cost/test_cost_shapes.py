"""Symbolic shape rules: reshapes keep the batch and token expressions through merges and splits,
slices keep what they can, and a dimension the rules cannot tell stays its number."""

from __future__ import annotations

import sympy

from deos_dsl.cost.shapes import Call, Dims, Shapes
from deos_dsl.cost.symbols import B, N_TEXT, N_VIS

SHAPES = Shapes({B: 2, N_TEXT: 8, N_VIS: 16})
L = N_TEXT + N_VIS
X = Dims((B, L, sympy.Integer(32)), (2, 24, 32))


def _infer(name: str, *args: object, out: tuple[int, ...]) -> tuple[sympy.Expr, ...]:
    return SHAPES.infer(Call(name, args), out).exprs


def test_reshapes_merge_and_split():
    heads = Dims((B, L, sympy.Integer(4), sympy.Integer(8)), (2, 24, 4, 8))
    assert _infer("view", X, [2, 24, 4, 8], out=(2, 24, 4, 8)) == heads.exprs
    merged = _infer("view", Dims((B, sympy.Integer(4), L, sympy.Integer(8)), (2, 4, 24, 8)), [8, 24, 8], out=(8, 24, 8))
    assert merged == (4 * B, L, 8)
    assert _infer("_unsafe_view", Dims(merged, (8, 24, 8)), [2, 4, 24, 8], out=(2, 4, 24, 8)) == (B, 4, L, 8)
    flat = _infer("reshape", X, [48, 32], out=(48, 32))
    assert flat == (B * L, 32)
    assert _infer("view", Dims(flat, (48, 32)), [2, 24, 32], out=(2, 24, 32)) == X.exprs
    assert _infer("unsqueeze", X, 1, out=(2, 1, 24, 32)) == (B, 1, L, 32)


def test_a_grid_split_of_the_tokens_is_a_number():
    """Tokens laid out on a 4x6 grid have no symbolic factors: the dims stay numbers."""
    assert _infer("view", X, [2, 4, 6, 32], out=(2, 4, 6, 32)) == (B, 4, 6, 32)


def test_slices_permutes_cats():
    assert _infer("slice", X, 1, 2, 2**63 - 1, out=(2, 22, 32)) == (B, L - 2, 32)
    assert _infer("slice", X, 1, -1, None, out=(2, 1, 32)) == (B, 1, 32)
    assert _infer("transpose", X, 1, 2, out=(2, 32, 24)) == (B, 32, L)
    text = Dims((B, N_TEXT, sympy.Integer(32)), (2, 8, 32))
    assert _infer("cat", [X, text], 1, out=(2, 32, 32)) == (B, L + N_TEXT, 32)


def test_matmul_attention_and_unknown_ops():
    q = Dims((B, sympy.Integer(4), L, sympy.Integer(8)), (2, 4, 24, 8))
    k_t = Dims((B, sympy.Integer(4), sympy.Integer(8), L), (2, 4, 8, 24))
    scores = _infer("matmul", q, k_t, out=(2, 4, 24, 24))
    assert scores == (B, 4, L, L)
    assert _infer("scaled_dot_product_attention", q, q, q, out=(2, 4, 24, 8)) == q.exprs
    assert _infer("some_unknown_op", q, out=(2, 4, 24, 8)) == q.exprs  # same shape: positional
    assert _infer("some_unknown_op", q, out=(7, 3)) == (7, 3)
