"""IR structure, equality, resolution, units, formatting and comments."""

from __future__ import annotations

import json

import pytest

from deos_dsl.errors import Diagnostic, SpaceError
from deos_dsl.frontend import ir
from deos_dsl.frontend.api import format_text, loads, parse
from deos_dsl.frontend.formatter import format_module
from deos_dsl.frontend.regime import regime
from deos_dsl.frontend.render import diagnostic_text

SITE = "score: norm\n    operator: prune"


def one(text: str) -> ir.Space:
    (space,) = loads(text)
    return space


def test_equality_ignores_spans_and_comments_but_not_values():
    a = parse("space s {\n  constraint flops <= 0.5 * dense\n}\n")
    b = parse("# hello\n\n\n   space s { constraint flops <= 0.5*dense }  # bye\n")
    assert a == b and a.spaces[0].span != b.spaces[0].span
    assert a != parse("space s { constraint flops <= 0.25 * dense }")
    assert a.structure() == b.structure()


def test_selectors_cover_indices_slices_lists_percents_and_globs():
    site = parse('space s { site decoder.layers[-1, 2:, 2:16:2, ::3, 25%:75%], vision.layers[*], "model.lm.layers.*" { } }').spaces[0].sites[0]
    role, vision, module = site.selectors
    kinds = [type(i).__name__ for i in role.index.items]
    assert kinds == ["Point", "Slice", "Slice", "Slice", "Slice"]
    assert role.index.items[0].at == ir.Neg(operand=ir.Num(value=1))
    assert role.index.items[2] == ir.Slice(start=ir.Num(value=2), stop=ir.Num(value=16), step=ir.Num(value=2))
    assert role.index.items[4].start == ir.Num(value=25, unit="%")
    assert vision.index.every and module == ir.ModuleSelector(pattern="model.lm.layers.*")


def test_constants_fold_with_units():
    space = one("const V = 576\nconst L = 0.5\nspace s {\n  site decoder.layers[V / 288] {\n    retain: L ^ 4\n    " + SITE
                + "\n  }\n  constraint tokens.mean <= (64 / V * 100)%\n  constraint tokens.after(decoder.layers[2]) <= 2 * 64 tokens\n"
                "  constraint flops <= 1.2 TFLOP\n}\n")
    site = space.sites[0]
    assert site.selectors[0].index.items[0].at == ir.Num(value=2)
    assert site.retain.amount == ir.Num(value=0.0625)
    mean, after, flops = (c.bound for c in space.constraints)
    assert mean.unit == "%" and mean.value == pytest.approx(11.111111)
    assert after == ir.Num(value=128, unit="tokens") and flops == ir.Num(value=1.2, unit="TFLOP")


def test_defaults_fill_sites_and_missing_blocks_get_documented_defaults():
    space = one("space s {\n  defaults {\n    retain: 50%\n    " + SITE + "\n  }\n  site projector {\n    retain: 25%\n  }\n}\n")
    site = space.sites[0]
    assert site.retain.amount == ir.Num(value=25, unit="%") and site.score == ir.Score(kind="norm")
    assert site.activate == ir.ActivateFixed(on=True)
    assert space.defaults is None and space.parent is None
    assert space.tokens.reducible.kind == "visual" and space.objective.task == "cross_entropy"
    assert space.policy.optimizer == "adam" and space.policy.steps == ir.Num(value=300)


def test_extends_overrides_entries_sites_and_constraints():
    spaces = loads(
        "space base {\n  site projector {\n    retain: 20%\n    " + SITE + "\n  }\n"
        "  constraint tokens.mean <= 30%\n  constraint flops <= 0.5 * dense\n  policy {\n    lr: 0.1\n    steps: 50\n  }\n}\n"
        "space child extends base {\n  site projector {\n    retain: 25%\n  }\n  site decoder.layers[2] {\n    retain: 10%\n    " + SITE + "\n  }\n"
        "  constraint tokens.mean <= 10%\n  policy {\n    steps: 100\n  }\n}\n"
        "space grandchild extends child {\n}\n")
    base, child, grandchild = spaces
    assert [s.retain.amount.value for s in child.sites] == [25, 10]
    assert child.sites[0].operator == base.sites[0].operator
    assert [(c.quantity, c.bound.value) for c in child.constraints] == [("tokens.mean", 10), ("flops", 0.5)]
    assert child.policy.lr.value == 0.1 and child.policy.steps.value == 100
    assert grandchild.sites == child.sites and grandchild.name == "grandchild"


def test_regime_gives_every_parameter_for_every_form():
    for form, gamma in (("prune", 0), ("merge", 1), ("pool", 1), ("reweight", 0)):
        params = regime(ir.Operator(form=form))
        assert set(params) == set(ir.REGIME) and params["gamma"].value.value == gamma
    unified = one("space s { site projector { retain: 50% score: norm operator: unified { gamma: learned [0, 1] init 0.2 } } }").sites[0].operator
    assert isinstance(regime(unified)["gamma"], ir.LearnedParam) and regime(unified)["nu"].value.value == 1


@pytest.mark.parametrize("expr", ["a - (b - c)", "a - b - c", "-(1 + 2)", "2 ^ 3 ^ 2", "(2 ^ 3) ^ 2", "a / (b * c)",
                                  "(a + b)%", "a tokens", "-a ^ 2", "(-2) ^ 2", "(50%)%", "0.25 * dense", "1e-05 + inf"])
def test_expressions_format_back_to_the_same_tree(expr: str):
    module = parse(f"const x = {expr}\n")
    assert parse(format_module(module)) == module
    assert format_module(parse(format_module(module))) == format_module(module)


def test_formatter_keeps_comments_in_place():
    text = ("# header\n\nimport \"x.deos\"  # why\n\n# about s\nspace s {\n  # the site\n  site projector {  # head\n"
            "    retain: 50%  # half\n    # before the brace\n  }\n}\n# the end\n")
    formatted = format_text(text)
    for comment in ("# header", "# why", "# about s", "# the site", "# head", "# half", "# before the brace", "# the end"):
        assert comment in formatted
    assert formatted.index("# header") < formatted.index("import") < formatted.index("# about s") < formatted.index("space s")
    assert "retain: 50%  # half" in formatted
    assert format_text(formatted) == formatted


def test_json_schema_and_round_trip_with_infinity():
    schema = ir.Module.model_json_schema()
    assert {"Space", "Site", "Operator", "Constraint", "RetainLearned", "LearnedParam", "Span"} <= set(schema["$defs"])
    space = one("space s { site projector { retain: 50% score: norm operator: unified { gamma: 1 tau: inf } } }")
    dumped = space.model_dump_json()
    json.loads(dumped)  # strict JSON: infinity is the string "Infinity"
    assert ir.Space.model_validate_json(dumped) == space


def test_syntax_error_is_one_positioned_diagnostic():
    with pytest.raises(SpaceError) as caught:
        parse("space s {\n  site projector {\n    retian: 50%\n  }\n}\n", "f.deos")
    (diag,) = caught.value.diagnostics
    assert (diag.file, diag.line, diag.col) == ("f.deos", 3, 5)
    assert "expected one of `activate`, `at`, `operator`, `retain`, `score`, `}`" in diag.message
    assert diag.hint == "did you mean `retain`?" and diag.source_line == "    retian: 50%"


def test_caret_underlines_the_span():
    diag = Diagnostic("f.deos", 3, 5, "bad", end_line=3, end_col=11, hint="did you mean `retain`?", source_line="    retian: 50%")
    lines = diagnostic_text(diag).plain.splitlines()
    assert lines[0] == "f.deos:3:5: error: bad"
    assert lines[1].endswith("    retian: 50%")
    assert lines[2].index("^") == lines[1].index("retian") and lines[2].strip() == "^~~~~~"
    assert lines[3] == "  hint: did you mean `retain`?"


def test_import_is_resolved_relative_to_the_importing_file(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "base.deos").write_text("const K = 3\nspace base {\n  site decoder.layers[K] {\n    retain: 50%\n    " + SITE + "\n  }\n}\n")
    main = tmp_path / "main.deos"
    main.write_text('import "lib/base.deos"\nspace top extends base {\n  constraint tokens.mean <= K * 10 tokens\n}\n')
    (space,) = loads(main.read_text(), str(main))
    assert space.name == "top" and space.constraints[0].bound == ir.Num(value=30, unit="tokens")
    assert space.sites[0].span.file.endswith("base.deos")


def test_a_constant_from_two_imports_or_shadowing_one_names_both_places(tmp_path):
    (tmp_path / "a.deos").write_text("const K = 0.3\n")
    (tmp_path / "b.deos").write_text("# other\nconst K = 0.5\n")
    (tmp_path / "c.deos").write_text('import "a.deos"\n')
    both = tmp_path / "both.deos"
    both.write_text('import "a.deos"\nimport "b.deos"\n')
    with pytest.raises(SpaceError) as caught:
        loads(both.read_text(), str(both))
    (clash,) = caught.value.diagnostics
    assert (clash.file, clash.line) == (str(tmp_path / "b.deos"), 2)
    assert clash.message == f"constant `K` is also defined at {tmp_path / 'a.deos'}:1, and {both} imports both"
    shadow = tmp_path / "shadow.deos"
    shadow.write_text('import "a.deos"\nconst K = 0.4\n')
    with pytest.raises(SpaceError, match=f"2:1: error: constant `K` is already defined at {tmp_path / 'a.deos'}:1"):
        loads(shadow.read_text(), str(shadow))
    diamond = tmp_path / "diamond.deos"  # one file reached by two paths defines K once: no clash
    diamond.write_text('import "a.deos"\nimport "c.deos"\nspace s {\n  site decoder.layers[1] {\n    retain: K\n    ' + SITE + "\n  }\n}\n")
    (space,) = loads(diamond.read_text(), str(diamond))
    assert space.sites[0].retain.amount == ir.Num(value=0.3)


def test_an_overflowing_constant_says_so_in_words():
    with pytest.raises(SpaceError, match=r"1:11: error: cannot evaluate `\^` here: the result is too large \(over 1.8e\+308\)"):
        loads("const k = 10^10000\n")


@pytest.mark.parametrize("text", ["const x = " + "2 ^ " * 1500 + "1", "const x = " + "-" * 1500 + "1", "const x = " + "+".join(["1"] * 1500)])
def test_deep_nesting_is_our_error_not_a_crash(text: str):
    with pytest.raises(SpaceError, match="nested too deeply"):
        loads(text)
