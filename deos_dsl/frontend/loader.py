"""Files -> parsed modules, following `import` statements (missing files and cycles reported).

Invariant: a `Program` holds every module reachable from the root in dependency order
(imports before importers), every source text read, and every diagnostic found so far.

Input is bounded and confined:
- a source is read only if it is a regular file (never a device, FIFO or socket, which could
  block or never end) of at most `max_source_bytes()` bytes (1 MiB; `DEOS_MAX_SPACE_BYTES`
  changes it); a UTF-8 byte-order mark is accepted;
- an `import` resolves, symlinks followed, inside the root file's folder, the bundled spaces
  (`deos_dsl.spaces`) or a folder of `DEOS_IMPORT_PATH` (`os.pathsep`-separated; the CLI's
  `--import-path`); any other path is refused before it is opened (a space file must not
  read, nor quote, files it was not given). A relative import is looked for beside the
  importing file first, then in the bundled spaces and the import-path folders, in order.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from lark.exceptions import VisitError

import deos_dsl.spaces
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


DEFAULT_MAX_SOURCE_BYTES = 1 << 20
BUNDLED_SPACES = Path(deos_dsl.spaces.__file__).resolve().parent


def max_source_bytes() -> int:
    """The largest .deos file read: `DEOS_MAX_SPACE_BYTES` if set to a positive integer, else 1 MiB."""
    text = os.environ.get("DEOS_MAX_SPACE_BYTES", "")
    return int(text) if text.isdigit() and int(text) > 0 else DEFAULT_MAX_SOURCE_BYTES


def import_roots(root: Path) -> list[Path]:
    """The folders an import may resolve into (module docstring), resolved."""
    extra = [Path(p) for p in os.environ.get("DEOS_IMPORT_PATH", "").split(os.pathsep) if p]
    return [folder.resolve() for folder in (root.parent, BUNDLED_SPACES, *extra)]


def read_source(path: Path) -> str:
    """Read a regular file of at most `max_source_bytes()` as UTF-8 (a BOM is dropped), or raise
    SpaceError (missing, a directory, not a regular file, too large, unreadable, not text)."""
    name = str(path)

    def refuse(message: str, hint: str | None = None) -> SpaceError:
        return SpaceError([Diagnostic(name, 1, 1, message, hint=hint)])

    limit = max_source_bytes()
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise refuse("is a directory, not a .deos file")
        if not stat.S_ISREG(mode):
            raise refuse("is not a regular file (a device, FIFO or socket)", "give the path of a .deos file")
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise refuse("no such file") from None
    except (OSError, ValueError) as error:
        raise refuse(f"cannot read: {getattr(error, 'strerror', None) or error}") from None
    if len(data) > limit:
        raise refuse(f"is larger than {limit} bytes, the limit for a .deos file",
                     "split it into files that import each other, or raise DEOS_MAX_SPACE_BYTES")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise refuse(f"not UTF-8 text ({error.reason} at byte {error.start})") from None


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
    _load(program, root, text, stack=[], roots=import_roots(root))
    return program


def _inside(target: Path, roots: list[Path]) -> bool:
    try:
        resolved = target.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return False
    return any(resolved.is_relative_to(root) for root in roots)


def _resolve_import(importer: Path, written: str, roots: list[Path]) -> Path:
    """The file `import "written"` in `importer` names: beside the importer when it is there (or
    the path is absolute), else in the first further root (`import_roots` after the root file's
    folder: the bundled spaces, then `DEOS_IMPORT_PATH` in order) that holds it inside the roots,
    else beside the importer (then reported as not found, or as leaving the roots)."""
    beside = importer.parent / written
    if Path(written).is_absolute() or _is_file(beside):
        return beside
    found = (root / written for root in roots[1:] if _inside(root / written, roots) and _is_file(root / written))
    return next(found, beside)


def _load(program: Program, path: Path, text: str | None, stack: list[str], roots: list[Path]) -> None:
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
        target = _resolve_import(path, imp.path, roots)
        target_name = _display(target)
        if target_name in stack or target_name == name:
            cycle = " -> ".join([*stack[stack.index(target_name):], name, target_name] if target_name in stack else [name, name])
            report(program.diagnostics, imp, f"import cycle: {cycle}", "a file cannot import itself, even indirectly")
            continue
        if not _inside(target, roots):
            report(program.diagnostics, imp, f"import `{imp.path}` leaves the folders a space may import from",
                   f"imports resolve inside {roots[0]} and the bundled spaces; add a folder with --import-path DIR "
                   "(or DEOS_IMPORT_PATH)")
            continue
        program.imports[name].append(target_name)
        if target_name in program.modules:
            continue
        if not _is_file(target):
            found = "is a directory, not a .deos file" if target.is_dir() else "not found"
            report(program.diagnostics, imp, f"imported file `{imp.path}` {found}",
                   f"looked for {target_name}" + ("" if Path(imp.path).is_absolute() else
                                                  ", then in the bundled spaces and the --import-path folders"))
            program.imports[name].remove(target_name)
            continue
        _load(program, target, None, [*stack, name], roots)
        if target_name not in program.modules:
            program.imports[name].remove(target_name)
    program.modules[name] = module
