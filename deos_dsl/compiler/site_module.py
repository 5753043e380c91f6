"""The trainable module of one relaxed site (DESIGN 1.2), inserted into the graph by `insert_relaxed`.

Parameters, initialised from the space's IR (a resolved `ir.Site`); learned ones are
`nn.Parameter`s of an UNCONSTRAINED raw value, fixed ones are buffers holding the value itself:
- gate `p = sigmoid(alpha)`; a fixed `activate: on/off` is the buffer `alpha = +inf / -inf`
  (so `p` is exactly 1 / 0);
- keep ratio `c = lo + (hi - lo) * sigmoid(beta)` (DESIGN's `c_min + (1 - c_min) sigmoid(beta)`
  for `hi = 1`); a `retain: choices(...)` is searched over `[min, max]` from the median choice;
  a fixed count (`64 tokens`, `drop 16 tokens`) stays a count of the tokens ENTERING the site;
- regime: `gamma, nu, theta = lo + (hi - lo) * sigmoid(raw)`, `tau = exp(log tau)` on a log
  scale (sigmoid-bounded otherwise), `rho = softplus(raw)`, each clamped to its `[lo, hi]`.
`temperature` (a buffer) is the soft top-k temperature; the search anneals it, `0` is the hard mask:
there a token the entering mask removed (0) ranks after every present one (`ops.removed_last`), so
it takes no keep slot, as in the emitted graph, where it no longer exists.
`gate_sample` (the search's hook, default None) replaces the gate `p` in `forward` when set:
a relaxed sample, scalar or one per example `[B]` (`deos_dsl.search.relaxation`).
`into` / `recycle` shape the operator's inputs as in `site_transfer`: `recycle` and
`into: extra(n > 1)` keep the shape (the retain count is the dominant tokens, the `n`
contextual targets are kept on top of it); `into: extra(1)` adds a token, so `forward` refuses it.

`forward(x [B, N, D], scores [B, N], mask [B, N] | None, sizes [B, N] | None, features | None)`
returns `(y [B, N, D], mask [B, N], sizes [B, N], bias [B, N])`: `mask` is the cumulative soft
keep mask (the entering mask times this site's), `bias` the additive key bias that downstream
attention must add. Identity points: gate 0 gives `y == x` exactly, and keep-all with
`temperature = 0`, `gamma = rho = 0` does too; both give `bias == 0`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deos_dsl.errors import DeosCompileError, Diagnostic
from deos_dsl.frontend import ir
from deos_dsl.frontend.regime import regime as regime_of
from deos_dsl.frontend.vocab import SCORES
from deos_dsl.ops import LearnedScorer, Regime, attention_bias, relaxed_reduce, removed_last

from .selectors import raise_diagnostics, report_at
from .site_scores import grid_side
from .site_transfer import bipartite_min_kept, extra_tokens, fuse_refusal, recycle_share, transfer_inputs

Span = tuple[int, int]
EPS = 1e-4


@dataclass(frozen=True)
class ParamSpec:
    """How one site parameter is stored: `transform(raw)` with `raw` learned or fixed."""

    transform: str  # "fixed" | "sigmoid" | "exp" | "softplus"
    lo: float
    hi: float
    init: float
    learned: bool

    def raw(self) -> float:
        """The raw value whose transform is `init` (clamped inside open ranges)."""
        if self.transform == "sigmoid":
            if not self.learned:
                return self.init  # a fixed gate is the logit +-inf itself
            unit = min(max((self.init - self.lo) / (self.hi - self.lo), EPS), 1 - EPS)
            return math.log(unit / (1 - unit))
        if self.transform == "exp":
            return math.log(max(self.init, EPS))
        if self.transform == "softplus":
            return math.log(math.expm1(max(self.init, EPS)))
        return self.init

    def value(self, raw: Tensor) -> Tensor:
        if self.transform == "fixed":
            return raw
        if self.transform == "sigmoid":
            return self.lo + (self.hi - self.lo) * torch.sigmoid(raw)
        mapped = torch.exp(raw) if self.transform == "exp" else F.softplus(raw)
        return mapped.clamp(self.lo, self.hi)


def _number(expr: ir.Expr) -> ir.Num:
    assert isinstance(expr, ir.Num), "sites must come from a resolved space"
    return expr


def _ratio(expr: ir.Expr, n_reducible: int) -> float:
    num = _number(expr)
    if num.unit == "tokens":
        return num.value / max(n_reducible, 1)
    return num.value / 100 if num.unit == "%" else num.value


def gate_spec(activate: ir.Activate) -> ParamSpec:
    if isinstance(activate, ir.ActivateFixed):
        return ParamSpec("sigmoid", 0.0, 1.0, math.inf if activate.on else -math.inf, False)
    return ParamSpec("sigmoid", 0.0, 1.0, _number(activate.init).value, True)


def _token_amounts(retain: ir.Retain) -> list[ir.Num]:
    """The amounts of `retain` that are token counts (`64 tokens`, `drop 8 tokens`, count choices;
    a learned range takes ratios only)."""
    if isinstance(retain, ir.RetainDrop):
        return [_number(retain.amount)]
    if isinstance(retain, ir.RetainFixed):
        amounts = [retain.amount]
    elif isinstance(retain, ir.RetainChoices):
        amounts = list(retain.options)
    else:
        return []
    return [num for num in map(_number, amounts) if num.unit == "tokens"]


def check_token_counts(retain: ir.Retain, n_reducible: int, site: str) -> None:
    """A `SpaceError` at each token count of `retain` that the site's `n_reducible` tokens cannot
    honour (keeping more than enter, or dropping them all): an error, not a silent clamp."""
    diagnostics: list[Diagnostic] = []
    dropping = isinstance(retain, ir.RetainDrop)
    for num in _token_amounts(retain):
        if (num.value >= n_reducible) if dropping else (num.value > n_reducible):
            what = f"drops {num.value:g} tokens" if dropping else f"keeps {num.value:g} tokens"
            report_at(diagnostics, num, f"`retain` {what}, but {n_reducible} reducible tokens reach `{site}` on this model",
                      f"{'drop fewer than' if dropping else 'keep at most'} {n_reducible} tokens, or write a percent")
    raise_diagnostics(diagnostics)


def keep_spec(retain: ir.Retain, n_reducible: int) -> tuple[ParamSpec, str | None]:
    """The keep-ratio spec, and `"keep"` / `"drop"` when the retain is a fixed token count."""
    if isinstance(retain, ir.RetainDrop):
        return ParamSpec("fixed", 0.0, 1.0, _number(retain.amount).value, False), "drop"
    if isinstance(retain, ir.RetainFixed):
        if _number(retain.amount).unit == "tokens":
            return ParamSpec("fixed", 0.0, 1.0, _number(retain.amount).value, False), "keep"
        return ParamSpec("fixed", 0.0, 1.0, _ratio(retain.amount, n_reducible), False), None
    if isinstance(retain, ir.RetainChoices):
        ratios = [_ratio(option, n_reducible) for option in retain.options]
        lo, hi = min(ratios), max(ratios)
        median = statistics.median_low(ratios)
        return (ParamSpec("sigmoid", lo, hi, median, True) if hi > lo else ParamSpec("fixed", lo, hi, lo, False)), None
    lo, hi, init = (_ratio(e, n_reducible) for e in (retain.lo, retain.hi, retain.init))
    return ParamSpec("sigmoid", lo, hi, init, True), None


GATE, KEEP = "alpha", "beta"  # the gate logit and the keep parameter, beside the regime's five
REGIME_TRANSFORMS = {"gamma": "sigmoid", "nu": "sigmoid", "theta": "sigmoid", "tau": "exp", "rho": "softplus"}


def regime_spec(name: str, param: ir.FixedParam | ir.LearnedParam) -> ParamSpec:
    if isinstance(param, ir.FixedParam):
        value = _number(param.value).value
        return ParamSpec("fixed", value, value, value, False)
    lo, hi, init = (_number(e).value for e in (param.lo, param.hi, param.init))
    transform = REGIME_TRANSFORMS[name]
    if name == "tau" and param.scale != "log":
        transform = "sigmoid"
    return ParamSpec(transform, lo, hi, init, True)


def _grid_positions(span: Span, window: tuple[int, int] | None) -> Tensor:
    """Row/column (or window-id, with `window`) positions `[n, 2]` of a square span grid; a
    `DeosCompileError` when the span is no square or the window exceeds its side."""
    side = grid_side(span)
    if side is None:
        raise DeosCompileError(f"a spatial operator needs a square grid of reducible tokens, got {span[1] - span[0]}",
                               "use `window`/`width` only on a square patch grid")
    wh, ww = window or (1, 1)
    if max(wh, ww) > side:
        raise DeosCompileError(f"a {wh}x{ww} window does not fit the {side}x{side} grid of reducible tokens",
                               f"use a window of at most {side}x{side} on this model")
    rows, cols = torch.arange(side).repeat_interleave(side), torch.arange(side).repeat(side)
    return torch.stack([rows // wh, cols // ww], dim=-1).float()


class SiteModule(nn.Module):
    """One relaxed site `name` over the reducible `span` of a `dim`-wide stream (module docstring)."""

    def __init__(self, name: str, settings: ir.SiteSettings, span: Span, dim: int) -> None:
        super().__init__()
        assert settings.activate and settings.retain and settings.score and settings.operator
        op = settings.operator
        self.site_name, self.span = name, span
        extra = extra_tokens(op)
        self.fuse, self.contextual, self.recycle = extra == 1, extra if extra > 1 else 0, recycle_share(op)
        n_reducible = span[1] - span[0]
        keep, self.count_mode = keep_spec(settings.retain, n_reducible)
        self.specs: dict[str, ParamSpec] = {GATE: gate_spec(settings.activate), KEEP: keep}
        self.specs.update({key: regime_spec(key, param) for key, param in regime_of(op).items()})
        for key, spec in self.specs.items():
            raw = torch.tensor(spec.raw(), dtype=torch.float32)
            if spec.learned:
                setattr(self, key, nn.Parameter(raw))
            else:
                self.register_buffer(key, raw)
        self.register_buffer("temperature", torch.tensor(1.0))
        self.gate_sample: Tensor | None = None
        score = SCORES[settings.score.kind]
        self.scorer = LearnedScorer(dim) if score.learned else None
        self.proportional = bool(op.proportional)
        # ToMe's bipartite split: only the odd span offsets (set B) receive transfer
        self.bipartite = settings.score.option in score.bipartite
        if not (self.bipartite and self.count_mode == "drop"):  # ToMe caps its r at half the tokens, as published
            check_token_counts(settings.retain, n_reducible, name)
        spatial = op.window is not None or op.width is not None
        self.locality = None if not spatial else (0.0 if op.window is not None else _number(op.width).value)
        self.register_buffer("positions", _grid_positions(span, op.window) if spatial else None)

    def value(self, key: str) -> Tensor:
        """The constrained value of parameter `key` (`alpha` -> gate p, `beta` -> keep c, regime names)."""
        return self.specs[key].value(getattr(self, key))

    @property
    def gate(self) -> Tensor:
        """The activation probability p (1 / 0 for a fixed gate)."""
        return self.value(GATE)

    @property
    def keep(self) -> Tensor:
        """The keep ratio c (a token count for a fixed `K tokens` / `drop K tokens`: `count_mode`)."""
        return self.value(KEEP)

    @property
    def gate_param(self) -> ParamSpec:
        return self.specs[GATE]

    @property
    def keep_param(self) -> ParamSpec:
        return self.specs[KEEP]

    def regime(self) -> Regime:
        theta = self.specs["theta"]
        thresholded = theta.learned or theta.init != 0.0  # a fixed theta of 0 means no threshold
        return Regime(gamma=self.value("gamma"), tau=self.value("tau"), theta=self.value("theta") if thresholded else None,
                      rho=self.value("rho"), nu=self.value("nu"), locality=self.locality, proportional=self.proportional,
                      incoming="mean" if self.contextual else "sum")

    @property
    def transfers(self) -> bool:
        """Whether the emitted site will compute an affinity and a transfer (`Regime.transfers`:
        not at a fixed `gamma` of 0 without a fused token); when not, its cost has no operator
        FLOPs."""
        return self.specs["gamma"].learned or Regime(gamma=float(self.value("gamma")), fuse=self.fuse).transfers

    def keep_ratio(self, entering: Tensor) -> Tensor:
        """Kept share `[B]` of the span given the soft count of tokens `entering` it `[B]`."""
        n = self.span[1] - self.span[0]
        if self.count_mode == "keep":
            kept = torch.minimum(self.keep.expand_as(entering), entering)
        elif self.count_mode == "drop":
            kept = (entering - self.keep).clamp_min(0.0)
        else:
            kept = self.keep * entering
        if self.bipartite:
            kept = torch.maximum(kept, bipartite_min_kept(entering))
        return kept / max(n, 1)

    def forward(self, x: Tensor, scores: Tensor, mask: Tensor | None = None, sizes: Tensor | None = None,
                features: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.fuse:
            raise fuse_refusal(self.site_name)
        b, n, _ = x.shape
        start, end = self.span
        mask_in = x.new_ones(b, n, dtype=torch.float32) if mask is None else mask
        if self.scorer is not None:
            scores = self.scorer(x)
        mask_v = mask_in[:, start:end]
        ratio = self.keep_ratio(mask_v.sum(dim=-1))
        span_scores = scores[:, start:end]  # hard (temperature 0): no keep slot for a token removed upstream
        span_scores = torch.where(self.temperature > 0, span_scores, removed_last(span_scores, mask_v))
        transfer = transfer_inputs(span_scores, ratio * (end - start), fuse=False, contextual=self.contextual,
                                   recycle=self.recycle, bipartite=self.bipartite, start=start,
                                   temperature=self.temperature)
        weights = mask_v if transfer.source_weights is None else mask_v * transfer.source_weights
        out = relaxed_reduce(x, range(start, end), transfer.scores, ratio + transfer.targets / (end - start),
                             regime=self.regime(), gate=self.gate if self.gate_sample is None else self.gate_sample,
                             temperature=self.temperature,
                             sizes=sizes, positions=self.positions, source_weights=weights,
                             dest_eligible=transfer.dest_eligible,
                             features=None if features is None else features[:, start:end])
        new_mask = mask_in * out.mask
        return out.x, new_mask, out.sizes, attention_bias(new_mask, out.sizes, self.proportional)
