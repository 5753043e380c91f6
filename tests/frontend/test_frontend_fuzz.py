"""Grammar fuzzing: programs generated from deos.lark never crash the front end.

Every generated program either resolves to valid IR or fails with `SpaceError` (never another
exception); every generated program that parses also formats back to the same IR.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

from deos_dsl.frontend.api import loads, parse
from deos_dsl.errors import SpaceError
from deos_dsl.frontend.formatter import format_module
from deos_dsl.frontend.parser import grammar

# Separators keep generated tokens apart; comments end their line so they hide nothing.
PROGRAMS = from_lark(grammar(), explicit={"WS": st.sampled_from([" ", "\n", "  \n "]), "COMMENT": st.just("# note\n")})
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(PROGRAMS)
def test_generated_programs_give_ir_or_our_error(tmp_path: Path, text: str) -> None:
    try:
        spaces = loads(text, str(tmp_path / "fuzz.deos"))
    except SpaceError as error:
        assert error.diagnostics and all(d.line >= 1 and d.col >= 1 for d in error.diagnostics)
    else:
        assert all(space.parent is None and space.defaults is None for space in spaces)


@FUZZ
@given(PROGRAMS)
@example(text='import"\r#"')  # found by this test: line breaks other than `\n` (here `\r`,
@example(text='import"\x0c#"')  # `\x0c`) inside a string turned its `#` into a comment
def test_generated_programs_round_trip_through_the_formatter(text: str) -> None:
    try:
        module = parse(text)
    except SpaceError:
        return
    formatted = format_module(module)
    assert parse(formatted) == module
    assert format_module(parse(formatted)) == formatted


@FUZZ
@given(st.text(alphabet=st.sampled_from(list('space site{}[]:,.()"#%*-+/^0123456789 \nxtokens')), max_size=80))
def test_arbitrary_text_gives_ir_or_our_error(text: str) -> None:
    try:
        loads(text)
    except SpaceError as error:
        assert error.diagnostics
