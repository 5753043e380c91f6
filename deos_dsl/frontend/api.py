"""The front end's public entry points: parse, format, load and check .deos files.

Invariant: every function either returns its result or raises `SpaceError` whose diagnostics
carry their source lines (ready for `render.render_error`).
"""

from __future__ import annotations

from pathlib import Path

from deos_dsl.errors import Diagnostic, SpaceError

from . import ir
from .diagnostics import with_sources
from .formatter import format_module
from .loader import Program, load_program, parse_module, too_deep
from .resolve import Resolver, complete
from .validate import Validator


def _raise_if_errors(diagnostics: list[Diagnostic]) -> None:
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors:
        raise SpaceError(errors)


def parse(text: str, file: str = "<string>") -> ir.Module:
    """Syntax-level IR of one file (no imports followed, nothing evaluated)."""
    try:
        module, diagnostics = parse_module(text, file)
    except SpaceError as error:
        raise SpaceError(with_sources(error.diagnostics, {file: text})) from None
    _raise_if_errors(with_sources(diagnostics, {file: text}))
    return module


def format_text(text: str, file: str = "<string>") -> str:
    """The canonical form of a file's text (syntax errors raise)."""
    module = parse(text, file)
    try:
        return format_module(module)
    except RecursionError:
        raise too_deep(file) from None


def analyse(program: Program) -> list[ir.Space]:
    """Resolve and validate every space of a loaded program; returns the root file's spaces.

    All diagnostics are appended to `program.diagnostics`; nothing is raised here.
    """
    resolver = Resolver(program)
    validator = Validator(program.diagnostics)
    spaces = []
    for name, module in program.modules.items():
        for decl in module.spaces:
            if resolver.declared[decl.name][0] is not decl:
                continue  # a duplicate, already reported
            validator.body(decl)
            merged = resolver.merged_space(decl.name)
            if merged is None:
                continue
            if merged.defaults is not None:
                validator.site(merged.defaults)
            space = complete(merged, program.diagnostics)
            validator.space(space)
            if name == program.root:
                spaces.append(space)
    return spaces


def check(path: str | Path, text: str | None = None) -> tuple[list[ir.Space], list[Diagnostic]]:
    """Resolved spaces of a file and ALL its diagnostics (with source lines); never raises."""
    program = load_program(path, text)
    try:
        spaces = analyse(program)
    except RecursionError:
        spaces = []
        program.diagnostics.extend(too_deep(program.root).diagnostics)
    return spaces, with_sources(SpaceError(program.diagnostics).diagnostics, program.sources)


def load_spaces(path: str | Path) -> list[ir.Space]:
    """The resolved, validated spaces defined in `path` (imports followed); raises SpaceError."""
    spaces, diagnostics = check(path)
    _raise_if_errors(diagnostics)
    return spaces


def loads(text: str, file: str = "<string>") -> list[ir.Space]:
    """Like `load_spaces` for text; imports are looked up relative to `file`'s folder."""
    spaces, diagnostics = check(file, text)
    _raise_if_errors(diagnostics)
    return spaces
