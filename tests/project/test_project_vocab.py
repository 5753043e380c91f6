"""One table per vocabulary (`deos_dsl.frontend.vocab`): every reader follows the corner and score
tables, so a row added there is parsed, printed, resolved, classified, coloured and computed."""

from __future__ import annotations

import pytest

from deos_dsl.compiler.site_scores import PER_ROW_QUERIES, QUERY_ROWS, STREAM_KERNELS
from deos_dsl.errors import SpaceError
from deos_dsl.frontend import ir, loads
from deos_dsl.frontend.formatter import format_module
from deos_dsl.frontend.parser import grammar_text
from deos_dsl.frontend.regime import regime, settings_of
from deos_dsl.frontend.vocab import CORNERS, PATTERN_COLOURS, REGIME, SCORES, SNAP_VALUES, UNIFIED, corner_of
from deos_dsl.search.discretise import corner_name, snap_value

SITE = """space s {{
  tokens {{
    reducible: visual
  }}
  site decoder.layers[1] {{
    activate: on
    retain: 50%
    score: {score}
    operator: {operator}
  }}
}}
"""
SCORE_TEXTS = [score.text(choice) for score in SCORES.values() for choice in (score.choices or (None,))]


def test_the_grammar_spells_the_tables_out():
    text = grammar_text()
    assert "<<" not in text
    assert all(f'"{name}"' in text for name in [*CORNERS, *SCORES])


@pytest.mark.parametrize("written", SCORE_TEXTS)
def test_every_score_parses_into_the_ir_and_prints_back(written: str):
    (space,) = loads(SITE.format(score=written, operator="prune"))
    score = space.sites[0].score
    assert SCORES[score.kind].text(score.option) == written
    assert f"score: {written}" in format_module(ir.Module(file="<t>", spaces=[space]))


@pytest.mark.parametrize("name", list(CORNERS))
def test_every_corner_parses_resolves_and_is_recognised(name: str):
    (space,) = loads(SITE.format(score="norm", operator=name))
    values = {key: param.value.value for key, param in regime(space.sites[0].operator).items()}
    assert values == dict(CORNERS[name].values)
    assert corner_of(values) == corner_name(values) == name  # the classifier knows its own corner
    assert settings_of(name) <= set(ir.SETTINGS) and settings_of(UNIFIED) == set(ir.SETTINGS)
    assert set(CORNERS[name].values) == set(REGIME)


def test_a_learned_parameter_snaps_onto_every_corner_value_it_defines():
    for corner in CORNERS.values():
        for key, value in corner.values.items():
            if key not in corner.settings:
                assert value in SNAP_VALUES[key], (corner.name, key)
                near = value + 1e-3 if value != float("inf") else 1e4
                assert snap_value(key, near, 0.01) == value


def test_a_setting_outside_the_corners_row_is_refused_with_the_row():
    with pytest.raises(SpaceError, match="`prune` does not take `rho`") as caught:
        loads(SITE.format(score="norm", operator="prune(rho: 0.5)"))
    assert "`prune` takes theta" in str(caught.value)


def test_the_compiler_has_a_kernel_for_every_score_and_a_colour_for_every_corner():
    stream = {name for name, score in SCORES.items() if not score.attention and not score.learned}
    assert set(STREAM_KERNELS) == stream
    queries = {choice for score in SCORES.values() if score.attention for choice in score.choices}
    assert set(QUERY_ROWS) | set(PER_ROW_QUERIES) == queries and not set(QUERY_ROWS) & set(PER_ROW_QUERIES)
    assert set(PATTERN_COLOURS) == {*CORNERS, "off", "mix"}


def test_legacy_score_json_still_reads():
    """Search directories written before the one-table vocabulary hold `{"query": "last"}`."""
    assert ir.Score.model_validate({"kind": "attention", "query": "last"}) == ir.Score(kind="attention", option="last")
    with pytest.raises(ValueError, match="takes `query` one of last, text, cls"):
        ir.Score(kind="attention", option="first")
    with pytest.raises(ValueError, match="takes no option"):
        ir.Score(kind="norm", option="last")
