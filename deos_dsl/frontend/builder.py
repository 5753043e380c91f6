"""Parse tree -> IR (a Lark Transformer), plus the placement of comments onto IR nodes.

Invariant: the builder never evaluates anything; it records the text's structure faithfully.
It reports only entries written twice in one block (returned as diagnostics, never raised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lark import Token, Transformer, Tree, v_args
from lark.tree import Meta

from deos_dsl.errors import Diagnostic

from . import ir
from .parser import Comment
from .vocab import UNIFIED


@dataclass
class Entry:
    """A `key: value` line of a block, before it is stored on its owner node."""

    key: str
    value: Any
    meta: Meta


@dataclass
class Statement:
    """A line-level element for comment placement: comments go to `node.comments[key]`."""

    node: ir.Node
    key: str
    line: int
    col: int
    end_line: int
    block: ir.Node | None  # the node owning the contents, when this statement has a `{ }` body


def _strip_quotes(token: Token) -> str:
    return str(token)[1:-1]


def _entry(key: str) -> Callable[..., Entry]:
    """A rule `key: value` whose only child is the value."""
    def build(self: Builder, meta: Meta, children: list[Any]) -> Entry:
        return Entry(key, children[0], meta)
    return build


def _node(cls: type[ir.Node], *names: str, **fixed: Any) -> Callable[..., ir.Node]:
    """A rule whose children are, in order, the fields `names` of `cls` (plus fixed fields)."""
    def build(self: Builder, meta: Meta, children: list[Any]) -> ir.Node:
        values = (str(c) if isinstance(c, Token) else c for c in children)
        return cls(span=self._span(meta), **dict(zip(names, values)), **fixed)
    return build


def _block_rule(cls: type[ir.Node], owner: str) -> Callable[..., ir.Node]:
    """A `{ key: value ... }` block whose children are all entries."""
    def build(self: Builder, meta: Meta, entries: list[Entry]) -> ir.Node:
        return self._block(cls, owner, meta, entries)
    return build


@v_args(meta=True)
class Builder(Transformer):
    """Builds a `Module`; `diagnostics` and `statements` are filled as a side product."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file
        self.diagnostics: list[Diagnostic] = []
        self.statements: list[Statement] = []

    # ---- helpers --------------------------------------------------------------------------
    def _span(self, meta: Meta) -> ir.Span | None:
        if getattr(meta, "empty", True):
            return None
        return ir.Span(file=self.file, line=meta.line, col=meta.column, end_line=meta.end_line, end_col=meta.end_column)

    def _token_span(self, token: Token) -> ir.Span:
        return ir.Span(file=self.file, line=token.line, col=token.column, end_line=token.end_line, end_col=token.end_column)

    def _statement(self, node: ir.Node, key: str, meta: Meta, block: ir.Node | None = None) -> None:
        self.statements.append(Statement(node, key, meta.line, meta.column, meta.end_line, block))

    def _entries(self, owner: str, entries: list[Entry]) -> dict[str, Entry]:
        """Entries by key; a key written twice is reported and the later one wins."""
        seen: dict[str, Entry] = {}
        for entry in entries:
            if entry.key in seen:
                self.diagnostics.append(Diagnostic(
                    self.file, entry.meta.line, entry.meta.column, f"`{entry.key}` is set twice in this {owner}",
                    hint=f"first set at line {seen[entry.key].meta.line}; keep one",
                ))
            seen[entry.key] = entry
        return seen

    def _block(self, cls: type[ir.Node], owner: str, meta: Meta, entries: list[Entry], **extra: Any) -> ir.Node:
        fields = self._entries(owner, entries)
        node = cls(span=self._span(meta), **{key: entry.value for key, entry in fields.items()}, **extra)
        for entry in entries:
            block = entry.value if isinstance(entry.value, ir.Operator) and entry.value.form == UNIFIED else None
            self._statement(node, entry.key, entry.meta, block)
        return node

    # ---- rules that map one-to-one onto an entry or a node --------------------------------
    reducible_entry = _entry("reducible")
    at_entry = _entry("at")
    activate_entry = _entry("activate")
    retain_entry = _entry("retain")
    score_entry = _entry("score")
    operator_entry = _entry("operator")
    into_setting = _entry("into")
    affinity_setting = _entry("affinity")
    task_entry = _entry("task")
    align_entry = _entry("align")
    optimizer_entry = _entry("optimizer")
    relaxation_entry = _entry("relaxation")
    anneal_entry = _entry("anneal")
    reducible_visual = _node(ir.Reducible, kind="visual")
    reducible_all = _node(ir.Reducible, kind="all")
    reducible_span = _node(ir.Reducible, "start", "end", kind="span")
    index_point = _node(ir.Point, "at")
    index_slice = _node(ir.Slice, "start", "stop", "step")
    activate_on = _node(ir.ActivateFixed, on=True)
    activate_off = _node(ir.ActivateFixed, on=False)
    activate_learned = _node(ir.ActivateLearned, "init")
    retain_fixed = _node(ir.RetainFixed, "amount")
    retain_drop = _node(ir.RetainDrop, "amount")
    into_kept = _node(ir.IntoKept)
    into_extra = _node(ir.IntoExtra, "count")
    param_fixed = _node(ir.FixedParam, "value")
    anneal_constant = _node(ir.Anneal, "start", schedule="constant")
    anneal_schedule = _node(ir.Anneal, "schedule", "start", "end")
    neg = _node(ir.Neg, "operand")
    const_decl = _node(ir.Const, "name", "value")
    index_all = _node(ir.Index, every=True)
    inf = _node(ir.Num, value=float("inf"))
    dense = _node(ir.Num, value=1.0, unit="dense")
    tokens_block = _block_rule(ir.Tokens, "tokens block")
    defaults_block = _block_rule(ir.Defaults, "defaults block")
    objective_block = _block_rule(ir.Objective, "objective block")
    policy_block = _block_rule(ir.Policy, "policy block")

    # ---- module ---------------------------------------------------------------------------
    def start(self, meta: Meta, items: list[ir.Node]) -> ir.Module:
        module = ir.Module(
            span=self._span(meta), file=self.file,
            imports=[i for i in items if isinstance(i, ir.Import)],
            consts=[i for i in items if isinstance(i, ir.Const)],
            spaces=[i for i in items if isinstance(i, ir.Space)],
        )
        for item in items:
            self._statement(item, "", meta_of(item), item if isinstance(item, ir.Space) else None)
        return module

    def import_decl(self, meta: Meta, children: list[Token]) -> ir.Import:
        return ir.Import(span=self._span(meta), path=_strip_quotes(children[0]))

    def space_decl(self, meta: Meta, children: list[Any]) -> ir.Space:
        name, parent, tokens, *body = children
        fields: dict[str, Any] = {"sites": [], "constraints": []}
        singles: list[Entry] = []
        for item in body:
            if isinstance(item, ir.Site):
                fields["sites"].append(item)
            elif isinstance(item, ir.Constraint):
                fields["constraints"].append(item)
            else:
                singles.append(Entry(type(item).__name__.lower(), item, meta_of(item)))
        fields.update({key: entry.value for key, entry in self._entries("space", singles).items()})
        space = ir.Space(span=self._span(meta), name=str(name), parent=parent and str(parent), tokens=tokens, **fields)
        for item in [tokens, *body]:
            if item is not None:
                self._statement(item, "", meta_of(item), None if isinstance(item, ir.Constraint) else item)
        return space

    def protected_entry(self, meta: Meta, children: list[str]) -> Entry:
        return Entry("protected", list(children), meta)

    # ---- keyword values (`!` rules keep their single token) --------------------------------
    def _keyword(self, meta: Meta, children: list[Token]) -> str:
        return str(children[0])

    protected_kind = corner = regime_name = scale = switch = affinity = position = _keyword
    task = optimizer = relaxation = schedule = policy_number = number_setting = unit = _keyword

    # ---- sites ----------------------------------------------------------------------------
    def site_block(self, meta: Meta, children: list[Any]) -> ir.Site:
        selectors = [c for c in children if not isinstance(c, Entry)]
        return self._block(ir.Site, "site", meta, [c for c in children if isinstance(c, Entry)], selectors=selectors)

    def role_selector(self, meta: Meta, children: list[Any]) -> ir.RoleSelector:
        *names, index = children
        return ir.RoleSelector(span=self._span(meta), path=[str(n) for n in names], index=index)

    def module_selector(self, meta: Meta, children: list[Token]) -> ir.ModuleSelector:
        return ir.ModuleSelector(span=self._span(meta), pattern=_strip_quotes(children[0]))

    def index_items(self, meta: Meta, items: list[Any]) -> ir.Index:
        return ir.Index(span=self._span(meta), items=items)

    def retain_choices(self, meta: Meta, children: list[Any]) -> ir.RetainChoices:
        return ir.RetainChoices(span=self._span(meta), options=children)

    def retain_learned(self, meta: Meta, children: list[Any]) -> ir.RetainLearned:
        (lo, hi), init = children
        return ir.RetainLearned(span=self._span(meta), lo=lo, hi=hi, init=init)

    def range(self, meta: Meta, children: list[Any]) -> tuple[Any, Any]:
        return children[0], children[1]

    def score(self, meta: Meta, children: list[Token]) -> ir.Score:
        """`name`, or `name ( option : choice )` (every token kept): the choice is the 5th."""
        words = [str(child) for child in children]
        return ir.Score(span=self._span(meta), kind=words[0], option=words[4] if len(words) > 1 else None)

    # ---- operators ------------------------------------------------------------------------
    def corner_operator(self, meta: Meta, children: list[Any]) -> ir.Operator:
        form, *settings = children
        return self._block(ir.Operator, f"`{form}` operator", meta, [s for s in settings if s is not None], form=form)

    def unified_operator(self, meta: Meta, settings: list[Entry]) -> ir.Operator:
        return self._block(ir.Operator, f"{UNIFIED} operator", meta, settings, form=UNIFIED)

    def regime_setting(self, meta: Meta, children: list[Any]) -> Entry:
        return Entry(children[0], children[1], meta)

    def window_setting(self, meta: Meta, children: list[Token]) -> Entry:
        width, height = str(children[0]).split("x")
        return Entry("window", (int(width), int(height)), meta)

    def proportional_setting(self, meta: Meta, children: list[str]) -> Entry:
        return Entry("proportional", children[0] == "on", meta)

    def param_learned(self, meta: Meta, children: list[Any]) -> ir.LearnedParam:
        scale, (lo, hi), init = children
        return ir.LearnedParam(span=self._span(meta), scale=scale or "linear", lo=lo, hi=hi, init=init)

    # ---- constraints, objective, policy ---------------------------------------------------
    def constraint(self, meta: Meta, children: list[Any]) -> ir.Constraint:
        (quantity, site), op, bound = children
        return ir.Constraint(span=self._span(meta), quantity=quantity, site=site, op=str(op), bound=bound)

    def tokens_mean(self, meta: Meta, _: list[Any]) -> tuple[str, None]:
        return "tokens.mean", None

    def tokens_after(self, meta: Meta, children: list[Any]) -> tuple[str, Any]:
        return "tokens.after", children[0]

    def flops(self, meta: Meta, _: list[Any]) -> tuple[str, None]:
        return "flops", None

    def number_entry(self, meta: Meta, children: list[Any]) -> Entry:
        """`KEY: expr` where the keyword is the IR field (policy numbers, number settings)."""
        return Entry(children[0], children[1], meta)

    number_setting_entry = number_entry

    # ---- expressions ----------------------------------------------------------------------
    add, sub = _node(ir.Binary, "left", "right", op="+"), _node(ir.Binary, "left", "right", op="-")
    mul, div = _node(ir.Binary, "left", "right", op="*"), _node(ir.Binary, "left", "right", op="/")
    pow = _node(ir.Binary, "left", "right", op="^")

    def with_unit(self, meta: Meta, children: list[Any]) -> ir.Node:
        operand, unit = children
        if isinstance(operand, ir.Num) and operand.unit == "":
            return ir.Num(span=self._span(meta), value=operand.value, unit=unit)
        return ir.WithUnit(span=self._span(meta), operand=operand, unit=unit)

    def number(self, meta: Meta, children: list[Token]) -> ir.Num:
        return ir.Num(span=self._token_span(children[0]), value=float(children[0]))

    def ref(self, meta: Meta, children: list[Token]) -> ir.Ref:
        return ir.Ref(span=self._token_span(children[0]), name=str(children[0]))



def meta_of(node: ir.Node) -> Meta:
    """A Lark-like Meta rebuilt from a node's span (nodes keep spans, not Meta objects)."""
    meta = Meta()
    assert node.span is not None
    meta.line, meta.column, meta.end_line = node.span.line, node.span.col, node.span.end_line
    meta.empty = False
    return meta


def place_comments(statements: list[Statement], comments: list[Comment], module: ir.Module) -> None:
    """Attach each comment to the statement it belongs to (see `ir.Node.comments` keys).

    Comments before the first statement and ending with a blank line are the file header
    (key "{" of the module). A comment after code goes to the latest statement that starts or
    ends on its line; an own-line comment goes before the next statement of its innermost
    block, else before the block's closing brace.
    """
    ordered = sorted(statements, key=lambda s: (s.line, s.col))
    first = ordered[0].line if ordered else float("inf")
    ends = [c.line for c in comments if c.own_line and c.blank_after and c.line < first]
    header, comments = [c for c in comments if ends and c.line <= ends[-1]], [c for c in comments if not ends or c.line > ends[-1]]
    if header:
        module.comments["{"] = [c.text for c in header]
    for comment in comments:
        if not comment.own_line:
            on_line = [s for s in ordered if (s.line == comment.line and s.col < comment.col) or s.end_line == comment.line]
            if on_line:
                target = max(on_line, key=lambda s: (s.line, s.col))
                target.node.comments.setdefault(target.key + "#", []).append(comment.text)
                continue
        blocks = [s for s in ordered if s.block is not None and s.line < comment.line < s.end_line]
        inner = max(blocks, key=lambda s: (s.line, s.col)) if blocks else None
        limit = inner.end_line if inner else float("inf")
        following = next((s for s in ordered if comment.line < s.line < limit or (s.line == comment.line and s.col > comment.col)), None)
        if following is not None:
            following.node.comments.setdefault(following.key, []).append(comment.text)
        else:
            owner = inner.block if inner else module
            owner.comments.setdefault("}", []).append(comment.text)


def build(tree: Tree, file: str, comments: list[Comment]) -> tuple[ir.Module, list[Diagnostic]]:
    """Build the IR of one parsed file; returns it with the duplicate-entry diagnostics."""
    builder = Builder(file)
    module = builder.transform(tree)
    place_comments(builder.statements, comments, module)
    return module, builder.diagnostics
