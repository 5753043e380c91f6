"""Regime parameters of the unified token-reduction operator (DESIGN 1.1).

`Regime` is a frozen dataclass.  Every continuous field accepts a Python float or a
tensor (0-d, or shape [B] for per-example values) so that the search can pass learnable
tensors; the structural fields (`proportional`, `incoming`, `fuse`) are plain Python values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Param = float | Tensor

# Additive attention-logit bias used for tokens that must not be attended to (dropped or
# padding slots).  Finite on purpose: -inf turns fully masked rows into NaN.
NEG_BIAS = -1.0e4


@dataclass(frozen=True)
class Regime:
    """Operator regime `Omega = (gamma, tau, theta, rho, nu)` plus optional extensions.

    gamma: transfer strength in [0, 1] (0 = prune, 1 = full transfer).
    tau: softmax temperature of the destination assignment, >= 0; `0` is an exact
        one-hot argmax (first index on ties), `math.inf` is exactly uniform.
    theta: optional threshold on the mean-1 normalised score; keeps only tokens with
        `shat > theta`, capped by the keep count.  `None` disables it.
    rho: reweight strength; kept tokens are scaled by `1 + rho * shat`.
    nu: normalisation exponent of the transfer denominator.
    locality: optional width `w` of the spatial term `-dist(pos_j, pos_i) / w` added to
        the affinity; `0.0` means a hard window (only `dist == 0` destinations allowed).
    proportional: add `log size` to the attention bias (ToMe proportional attention).
    incoming: `"sum"` (DESIGN 1.1) or `"mean"`: the transfer arriving at a destination is
        first averaged into a single token of mass `min(M_i, 1)` (VisionZip).
    fuse: append one extra destination token (feature affinity 0, always eligible) after
        the reducible span (EViT inattentive-token fusion); it leaves with size 1.
    """

    gamma: Param = 0.0
    tau: Param = 0.0
    theta: Param | None = None
    rho: Param = 0.0
    nu: Param = 1.0
    locality: Param | None = None
    proportional: bool = False
    incoming: Literal["sum", "mean"] = "sum"
    fuse: bool = False

    def __post_init__(self) -> None:
        if self.incoming not in ("sum", "mean"):
            raise ValueError(f"incoming must be 'sum' or 'mean', got {self.incoming!r}")
        for name in ("gamma", "tau", "rho"):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and (math.isnan(value) or value < 0):
                raise ValueError(f"{name} must be >= 0, got {value}")
        if isinstance(self.locality, (int, float)) and self.locality < 0:
            raise ValueError(f"locality width must be >= 0, got {self.locality}")

    @property
    def selects_only(self) -> bool:
        """Whether the hard operator only SELECTS tokens, leaving the kept ones exactly as they
        are: nothing transferred (`gamma = 0`), no reweighting (`rho = 0`), sizes normalised by
        themselves (`nu = 1`), no threshold and no fused token (parameters given as numbers)."""
        fixed = all(isinstance(value, (int, float)) for value in (self.gamma, self.rho, self.nu))
        return fixed and self.gamma == 0 and self.rho == 0 and self.nu == 1 and self.theta is None and not self.fuse

    @property
    def transfers(self) -> bool:
        """Whether the hard operator moves mass between tokens: not when `gamma` is the number
        0 and there is no fused token (`reduce_tokens` then computes no affinity and no
        assignment, and its site costs no operator FLOPs)."""
        return not (isinstance(self.gamma, (int, float)) and self.gamma == 0 and not self.fuse)


def batch_view(p: Param, ndim: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """View a scalar or per-example `[B]` parameter as `[B or 1, 1, ...]` with `ndim` dims."""
    t = torch.as_tensor(p, dtype=dtype, device=device)
    if t.dim() > 1:
        raise ValueError(f"regime parameters must be scalars or [B] tensors, got {tuple(t.shape)}")
    return t.reshape((-1,) + (1,) * (ndim - 1)) if t.dim() == 1 else t.reshape((1,) * ndim)


def is_number(p: Param | None, value: float) -> bool:
    """Whether `p` is the Python number `value` (a tensor never is: it may be learned)."""
    return isinstance(p, (int, float)) and p == value


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Internal precision: float64 stays float64, every other floating dtype uses float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
