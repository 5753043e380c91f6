"""deos_dsl.ops: the unified token-reduction operator (DESIGN 1.1), pure tensor maths.

Hard form `reduce_tokens` (fewer tokens + kept indices), relaxed form `relaxed_reduce`
(shape-preserving, differentiable), importance scores, and two methods' token layouts (`layouts`).
"""

from deos_dsl.ops.inputs import SiteInputs
from deos_dsl.ops.layouts import pool_inputs, visionzip_inputs
from deos_dsl.ops.params import NEG_BIAS, Regime
from deos_dsl.ops.relaxed import RelaxedResult, relaxed_reduce
from deos_dsl.ops.scores import (LearnedScorer, attention_from_query, bipartite_scores, hidden_norm, random_order, rater_scores,
                                 text_similarity)
from deos_dsl.ops.select import ceil_count, keep_count, recycle_mask, removed_last
from deos_dsl.ops.unified import HardResult, attention_bias, gather_tokens, reduce_tokens, valid_bias

__all__ = [
    "NEG_BIAS",
    "HardResult",
    "LearnedScorer",
    "Regime",
    "RelaxedResult",
    "SiteInputs",
    "attention_bias",
    "attention_from_query",
    "bipartite_scores",
    "ceil_count",
    "gather_tokens",
    "hidden_norm",
    "keep_count",
    "pool_inputs",
    "random_order",
    "rater_scores",
    "recycle_mask",
    "reduce_tokens",
    "removed_last",
    "relaxed_reduce",
    "text_similarity",
    "valid_bias",
    "visionzip_inputs",
]
