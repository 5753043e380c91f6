"""Files -> parsed modules, following `import` statements (missing files and cycles reported).

Invariant: a `Program` holds every module reachable from the root in dependency order
(imports before importers), every source text read, and every diagnostic found so far.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lark.exceptions import VisitError

from deos_dsl.errors import Diagnostic, SpaceError

from . import ir
from .builder import build
from .diagnostics import report
from .parser import parse_tree, scan_comments


def too_deep(file: str) -> SpaceError:
    """The error for input whose nesting exceeds Python's recursion limit."""
    return SpaceError([Diagnostic(file, 1, 1, "input is nested too deeply", hint="split the expression using constants")])


def parse_module(text: str, file: str) -> tuple[ir.Module, list[Diagnostic]]:
    """Syntax only: parse and build one file (raises SpaceError on a syntax error)."""
    try:
        tree = parse_tree(text, file)
        return build(tree, file, scan_comments(text))
    except RecursionError:
        raise too_deep(file) from None
    except VisitError as error:  # Lark wraps what a transformer callback raises
        if isinstance(error.orig_exc, RecursionError):
            raise too_deep(file) from None
        raise error.orig_exc from error


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def read_source(path: Path) -> str:
    """Read a file as UTF-8 or raise SpaceError (missing, a directory, unreadable, not text)."""
    name = str(path)
    if _is_dir(path):
        raise SpaceError([Diagnostic(name, 1, 1, "is a directory, not a .deos file")])
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpaceError([Diagnostic(name, 1, 1, "no such file")]) from None
    except UnicodeDecodeError as error:
        raise SpaceError([Diagnostic(name, 1, 1, f"not UTF-8 text ({error.reason})")]) from None
    except (OSError, ValueError) as error:
        raise SpaceError([Diagnostic(name, 1, 1, f"cannot read: {getattr(error, 'strerror', None) or error}")]) from None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte, ...
        return False


@dataclass
class Program:
    root: str
    modules: dict[str, ir.Module] = field(default_factory=dict)  # dependency order
    imports: dict[str, list[str]] = field(default_factory=dict)  # module -> imported modules
    sources: dict[str, str] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)


def _display(path: Path) -> str:
    """A file's name in diagnostics and its identity: the path as given, normalised."""
    return os.path.normpath(path)


def load_program(path: str | Path, text: str | None = None) -> Program:
    """Load `path` (or `text` standing for it) and everything it imports; never raises."""
    root = Path(path)
    program = Program(root=_display(root))
    _load(program, root, text, stack=[])
    return program


def _load(program: Program, path: Path, text: str | None, stack: list[str]) -> None:
    name = _display(path)
    try:
        text = read_source(path) if text is None else text
        program.sources[name] = text
        module, diagnostics = parse_module(text, name)
    except SpaceError as error:
        program.diagnostics.extend(error.diagnostics)
        return
    program.diagnostics.extend(diagnostics)
    program.imports[name] = []
    for imp in module.imports:
        target = path.parent / imp.path
        target_name = _display(target)
        if target_name in stack or target_name == name:
            cycle = " -> ".join([*stack[stack.index(target_name):], name, target_name] if target_name in stack else [name, name])
            report(program.diagnostics, imp, f"import cycle: {cycle}", "a file cannot import itself, even indirectly")
            continue
        program.imports[name].append(target_name)
        if target_name in program.modules:
            continue
        if not _is_file(target):
            report(program.diagnostics, imp, f"imported file `{imp.path}` not found", f"looked for {target_name}")
            program.imports[name].remove(target_name)
            continue
        _load(program, target, None, [*stack, name])
        if target_name not in program.modules:
            program.imports[name].remove(target_name)
    program.modules[name] = module
