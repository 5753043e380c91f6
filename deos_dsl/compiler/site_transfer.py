"""Where a site's dropped tokens go: the `into` and `recycle` settings as operator inputs.

Shared by the relaxed (`SiteModule`) and the hard (`HardSite`) form, over the reducible span
`[B, n]` of one site, with `keep` the retained count (`retain`; a real `[B]` count in the
relaxed form, an int in the hard form):
- `into: kept` (default): every kept token may receive (ToMe's similarity score: only set B,
  the odd stream positions, `bipartite_destinations`);
- `into: extra(1)`: EViT's fusion (`Regime.fuse`): the dropped tokens go into ONE new token,
  each weighted by its score (clamped at 0; with attention scores, EViT's attentiveness), and
  no kept token receives. Hard form only: it adds a token (`fuse_refusal`);
- `into: extra(n > 1)`: VisionZip's contextual targets (`visionzip_inputs`): `keep` dominant
  tokens by score plus `n` targets spread uniformly over the others (fewer if fewer are left),
  kept as well and the only destinations; each receives the MEAN of what it is sent
  (`incoming = "mean"`). The operator keeps `keep + n` tokens;
- `recycle: p`: source weight 1 on the best `ceil(p * dropped)` dropped tokens by score, 0 on
  the other dropped tokens, which are pruned (`recycle_mask`; soft at the relaxed form's
  temperature).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from deos_dsl.errors import DeosCompileError
from deos_dsl.frontend import ir
from deos_dsl.ops import ceil_count, recycle_mask, visionzip_inputs
from deos_dsl.ops.params import Param

Count = int | Tensor


def bipartite_destinations(n: int, device: torch.device, start: int) -> Tensor:
    """`[n]` bool over a span starting at stream position `start`: the tokens at ODD stream
    positions, ToMe's set B (the only merge destinations; ToMe alternates over the whole
    sequence, its class token at 0 in set A)."""
    return torch.arange(start, start + n, device=device) % 2 == 1


def bipartite_min_kept(entering: int | Tensor) -> int | Tensor:
    """ToMe's cap on a bipartite merge: at most `floor(n / 2)` of the `n` tokens entering merge
    (ToMe's `r = min(r, (t - protected) // 2)`), so at least `n - floor(n / 2)` stay. Ints or
    soft (tensor) counts alike; a soft count's floor has a zero gradient (`//` has none)."""
    if isinstance(entering, Tensor):
        return entering - torch.div(entering, 2, rounding_mode="floor")
    return entering - entering // 2


def extra_tokens(op: ir.Operator) -> int:
    """`n` of `into: extra(n)`; 0 for `into: kept` or no `into`."""
    if not isinstance(op.into, ir.IntoExtra):
        return 0
    assert isinstance(op.into.count, ir.Num), "sites must come from a resolved space"
    return int(op.into.count.value)


def recycle_share(op: ir.Operator) -> float | None:
    """The recycled share of the dropped tokens in `[0, 1]` (`recycle: 30%` -> 0.3), or None."""
    if op.recycle is None:
        return None
    assert isinstance(op.recycle, ir.Num), "sites must come from a resolved space"
    return op.recycle.value / 100 if op.recycle.unit == "%" else op.recycle.value


def fuse_refusal(name: str) -> DeosCompileError:
    """The error for a relaxed (search) form of an `into: extra(1)` site."""
    return DeosCompileError(f"site `{name}`: `into: extra(1)` fuses the dropped tokens into one NEW token, which "
                            "changes the token count: it has no shape-preserving relaxed form to search",
                            "emit the space with `deos emit`, or search `into: kept` / `into: extra(n)` with n > 1")


@dataclass(frozen=True)
class Transfer:
    """Operator inputs of one site's span: ranking `scores [B, n]`, the contextual `targets`
    kept on top of the retained count (0 without them), `dest_eligible [n] | [B, n]` and
    `source_weights [B, n]` (None: the operator's defaults)."""

    scores: Tensor
    targets: Count
    dest_eligible: Tensor | None
    source_weights: Tensor | None


def _targets(n: int, dominant: Count, contextual: int) -> Count:
    """How many contextual targets `visionzip_inputs` picks: `min(contextual, n - dominant)`."""
    if isinstance(dominant, Tensor):
        return (n - dominant).clamp(0, contextual)
    return min(contextual, n - dominant)


def transfer_inputs(scores: Tensor, keep: Count, *, fuse: bool, contextual: int, recycle: float | None,
                    bipartite: bool, start: int, temperature: Param = 0.0) -> Transfer:
    """The `Transfer` of a span at stream position `start` with `scores [B, n]` keeping `keep`
    tokens (module docstring); `contextual` is `n` of `into: extra(n > 1)` (0 otherwise),
    `temperature` the soft top-k's."""
    n = scores.shape[-1]
    eligible = bipartite_destinations(n, scores.device, start) if bipartite else None
    weights, targets = None, 0
    if fuse:
        eligible, weights = torch.zeros(n, dtype=torch.bool, device=scores.device), scores.clamp_min(0.0)
    elif contextual:
        dominant = ceil_count(keep) if isinstance(keep, Tensor) else keep
        chosen = visionzip_inputs(scores, dominant, contextual)
        scores, eligible, targets = chosen["scores"], chosen["dest_eligible"], _targets(n, dominant, contextual)
    if recycle is not None:
        recycled = recycle_mask(scores, keep + targets, recycle, temperature)
        weights = recycled if weights is None else weights * recycled
    return Transfer(scores, targets, eligible, weights)
