"""The IR of .deos files: pydantic v2 models, one per construct, each with its source span.

Invariants:
- `==` on nodes is STRUCTURAL: spans and attached comments are ignored, so
  `parse(format(ir)) == ir` compares meaning, not layout.
- A *parsed* `Module` mirrors the text (constants, `extends`, `defaults`, expressions).
  A *resolved* `Space` (see `resolve.py`) has no parent, no defaults, every site fully set,
  tokens/objective/policy filled, and every `Expr` folded to a `Num` literal: consumers read
  numbers with `Num.value` / `Num.unit` and never evaluate expressions themselves.

Semantics the compiler and the search rely on: a site reduces at the OUTPUT of each block its
selectors match, and each matched block is its own site; `retain` is relative to the reducible
tokens ENTERING the site (`%` or a unitless ratio) or a count (`tokens`); a depth percent
index `p%` means layer `floor(p / 100 * L)` of `L` layers; units are "" (plain), "%", "tokens",
the FLOP family and "dense" (a multiple of the dense model's cost).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from . import vocab
from .vocab import CORNERS, SCORES, UNIFIED

ROLES = ("vision", "projector", "decoder")

Unit = Literal["", "%", "tokens", "FLOP", "KFLOP", "MFLOP", "GFLOP", "TFLOP", "dense"]
FLOP_SCALE: dict[str, float] = {"FLOP": 1.0, "KFLOP": 1e3, "MFLOP": 1e6, "GFLOP": 1e9, "TFLOP": 1e12}


class Span(BaseModel):
    """Source range; lines and columns are 1-based, `end_col` is exclusive."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str
    line: int
    col: int
    end_line: int
    end_col: int


class Node(BaseModel):
    """Base of every IR node: a span, formatter comments, structural equality."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")
    span: Span | None = None
    # Comments keyed by the entry they precede ("" = the node itself, "field" = an entry of this
    # block, "field#" = a trailing comment, "}" = before the closing brace). Layout only.
    comments: SkipJsonSchema[dict[str, list[str]]] = Field(default_factory=dict, exclude=True, repr=False)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in fields_of(type(self)))

    __hash__ = None  # type: ignore[assignment]  # mutable and compared structurally

    def structure(self) -> dict[str, Any]:
        """A JSON-ready dump without spans: the part of the node that equality compares."""
        return _strip_spans(self.model_dump(mode="json"))


@functools.cache
def fields_of(cls: type[Node]) -> tuple[str, ...]:
    """The structural fields of a node class (everything but span and comments)."""
    return tuple( name for name in cls.model_fields if name not in ("span", "comments"))


def _strip_spans(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _strip_spans(item) for key, item in value.items() if key != "span"}
    if isinstance(value, list):
        return [_strip_spans(item) for item in value]
    return value


# ---- expressions --------------------------------------------------------------------------


class Num(Node):
    """A number with a unit; `dense` is `Num(1, "dense")`. The only Expr left after resolution."""

    kind: Literal["num"] = "num"
    value: float
    unit: Unit = ""


class Ref(Node):
    """A reference to a named constant."""

    kind: Literal["ref"] = "ref"
    name: str


class Binary(Node):
    kind: Literal["binary"] = "binary"
    op: Literal["+", "-", "*", "/", "^"]
    left: Expr
    right: Expr


class Neg(Node):
    kind: Literal["neg"] = "neg"
    operand: Expr


class WithUnit(Node):
    """A unit applied to a non-literal, e.g. `K tokens`; literals carry their unit in `Num`."""

    kind: Literal["unit"] = "unit"
    operand: Expr
    unit: Unit


Expr = Annotated[Union[Num, Ref, Binary, Neg, WithUnit], Field(discriminator="kind")]


# ---- site selectors -----------------------------------------------------------------------


class Point(Node):
    """One layer: an integer (negative counts from the end) or a percent of the depth."""

    kind: Literal["point"] = "point"
    at: Expr


class Slice(Node):
    """Python-style `start:stop:step`; start/stop may be depth percents, step is an integer."""

    kind: Literal["slice"] = "slice"
    start: Expr | None = None
    stop: Expr | None = None
    step: Expr | None = None


IndexItem = Annotated[Union[Point, Slice], Field(discriminator="kind")]


class Index(Node):
    """`[*]` (`every=True`, no items) or a list of points and slices."""

    every: bool = False
    items: list[IndexItem] = Field(default_factory=list)


class RoleSelector(Node):
    """A role path such as `decoder.layers[2:]` or `projector`; path[0] is the role."""

    kind: Literal["role"] = "role"
    path: list[str]
    index: Index | None = None

    @property
    def role(self) -> str:
        return self.path[0]


class ModuleSelector(Node):
    """A raw module path with globs, e.g. `"model.language_model.layers.*"`."""

    kind: Literal["module"] = "module"
    pattern: str


Selector = Annotated[Union[RoleSelector, ModuleSelector], Field(discriminator="kind")]


# ---- site settings ------------------------------------------------------------------------


class ActivateFixed(Node):
    kind: Literal["fixed"] = "fixed"
    on: bool


class ActivateLearned(Node):
    """A learned gate; `init` is the initial activation probability in (0, 1)."""

    kind: Literal["learned"] = "learned"
    init: Expr


Activate = Annotated[Union[ActivateFixed, ActivateLearned], Field(discriminator="kind")]


class RetainFixed(Node):
    """Keep a ratio (unitless or %) of the reducible tokens entering the site, or a count."""

    kind: Literal["fixed"] = "fixed"
    amount: Expr


class RetainDrop(Node):
    """Remove a fixed number of tokens at the site (ToMe's r)."""

    kind: Literal["drop"] = "drop"
    amount: Expr


class RetainChoices(Node):
    kind: Literal["choices"] = "choices"
    options: list[Expr]


class RetainLearned(Node):
    """A learned keep ratio in [lo, hi] starting at init (all ratios)."""

    kind: Literal["learned"] = "learned"
    lo: Expr
    hi: Expr
    init: Expr


Retain = Annotated[Union[RetainFixed, RetainDrop, RetainChoices, RetainLearned], Field(discriminator="kind")]


class Score(Node):
    """An importance score of `vocab.SCORES`: its `kind` and, for a score with an option, the
    `option` chosen (`attention(query: last)`: kind `attention`, option `last`)."""

    kind: Literal[tuple(SCORES)]
    option: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _option_by_name(cls, data: Any) -> Any:
        """Also read the option under its own name (`{"kind": "attention", "query": "last"}`, as
        files written before the one-table vocabulary hold it)."""
        if isinstance(data, dict) and data.get("kind") in SCORES:
            name = SCORES[data["kind"]].option
            if name is not None and name in data:
                data = {**{k: v for k, v in data.items() if k != name}, "option": data[name]}
        return data

    @model_validator(mode="after")
    def _option_fits(self) -> Score:
        spec = SCORES[self.kind]
        if spec.option is None and self.option is not None:
            raise ValueError(f"score `{self.kind}` takes no option")
        if spec.option is not None and self.option not in spec.choices:
            raise ValueError(f"score `{self.kind}` takes `{spec.option}` one of {', '.join(spec.choices)}")
        return self


class FixedParam(Node):
    kind: Literal["fixed"] = "fixed"
    value: Expr


class LearnedParam(Node):
    kind: Literal["learned"] = "learned"
    scale: Literal["linear", "log"] = "linear"
    lo: Expr
    hi: Expr
    init: Expr


Param = Annotated[Union[FixedParam, LearnedParam], Field(discriminator="kind")]

REGIME = vocab.REGIME


class IntoKept(Node):
    kind: Literal["kept"] = "kept"


class IntoExtra(Node):
    """Transfer into `count` new tokens appended after the kept ones (EViT, VisionZip)."""

    kind: Literal["extra"] = "extra"
    count: Expr


Destination = Annotated[Union[IntoKept, IntoExtra], Field(discriminator="kind")]


class Operator(Node):
    """A corner of `vocab.CORNERS` (`form` = its name) or `unified`, with explicit settings.

    Unset settings are None; `regime.py` gives the full parameter set of any operator.
    """

    form: Literal[(*CORNERS, UNIFIED)]
    gamma: Param | None = None
    tau: Param | None = None
    theta: Param | None = None
    rho: Param | None = None
    nu: Param | None = None
    window: tuple[int, int] | None = None
    width: Expr | None = None
    proportional: bool | None = None
    into: Destination | None = None
    recycle: Expr | None = None
    affinity: Literal["keys", "hidden"] | None = None


SETTINGS = fields_of(Operator)[1:]  # everything after `form`


Position = Literal["before", "mid", "after"]


class SiteSettings(Node):
    """The per-site settings; all optional in text, all but `at` set after resolution. `at`:
    where in each selected block the site reduces (`position`)."""

    at: Position | None = None
    activate: Activate | None = None
    retain: Retain | None = None
    score: Score | None = None
    operator: Operator | None = None

    @property
    def position(self) -> Position:
        """`before` the block (the stream entering it), `mid` (between its attention and its
        MLP, after the attention's residual add) or `after` it (its output: the default)."""
        return self.at or "after"


SITE_FIELDS = ("at", "activate", "retain", "score", "operator")


class Defaults(SiteSettings):
    """`defaults { ... }`: settings every site of the space inherits unless it sets its own."""


class Site(SiteSettings):
    """One `site` block; every block matched by a selector becomes its own searched site."""

    selectors: list[Selector]


# ---- space-level blocks -------------------------------------------------------------------


class Reducible(Node):
    """The reducible set: the visual span, all but the protected tokens, or [start, end)."""

    kind: Literal["visual", "all", "span"]
    start: Expr | None = None
    end: Expr | None = None


class Tokens(Node):
    reducible: Reducible | None = None
    protected: list[Literal["cls", "text", "system"]] | None = None


class Constraint(Node):
    """A one-sided limit: `quantity op bound`; `site` is set for `tokens.after(...)` only."""

    quantity: Literal["tokens.mean", "tokens.after", "flops"]
    site: Selector | None = None
    op: Literal["<=", ">="]
    bound: Expr


class Objective(Node):
    task: Literal["cross_entropy", "lm", "kl"] | None = None
    align: Expr | None = None


class Anneal(Node):
    """Relaxation temperature schedule from `start` to `end` (`constant` has end None)."""

    schedule: Literal["constant", "linear", "exponential", "cosine"]
    start: Expr
    end: Expr | None = None


class Policy(Node):
    optimizer: Literal["adam", "adamw", "sgd"] | None = None
    lr: Expr | None = None
    steps: Expr | None = None
    relaxation: Literal["hard_concrete", "gumbel_sigmoid", "straight_through"] | None = None
    anneal: Anneal | None = None
    dual_step: Expr | None = None
    penalty: Expr | None = None
    seed: Expr | None = None
    snap: Expr | None = None
    decide: Expr | None = None


class Space(Node):
    name: str
    parent: str | None = None
    tokens: Tokens | None = None
    defaults: Defaults | None = None
    sites: list[Site] = Field(default_factory=list)
    constraints: list[Constraint] = Field(default_factory=list)
    objective: Objective | None = None
    policy: Policy | None = None


class Import(Node):
    path: str


class Const(Node):
    name: str
    value: Expr


class Module(Node):
    """One parsed .deos file."""

    file: str
    imports: list[Import] = Field(default_factory=list)
    consts: list[Const] = Field(default_factory=list)
    spaces: list[Space] = Field(default_factory=list)


for _model in (Binary, Neg, WithUnit):
    _model.model_rebuild()
