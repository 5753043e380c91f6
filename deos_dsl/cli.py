"""The `deos` command line: one small function per subcommand, registered in `COMMANDS`.

Exit codes: 0 ok, 1 diagnostics (or files that `fmt --check` would change), 2 usage error,
70 internal error (a bug: one line on stderr, the traceback only with DEOS_DEBUG=1).
To add a subcommand, write `cmd_x(args, out, err) -> int` and an `add_x(subparsers)`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console

from deos_dsl import __version__
from deos_dsl.frontend import ir
from deos_dsl.frontend.api import check, format_text
from deos_dsl.frontend.diagnostics import DeosError
from deos_dsl.frontend.loader import read_source
from deos_dsl.frontend.render import render_diagnostics, space_tree

EXIT_OK, EXIT_DIAGNOSTICS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70

Command = Callable[[argparse.Namespace, Console, Console], int]


def _report(diagnostics: list, err: Console) -> int:
    render_diagnostics(diagnostics, err)
    errors = sum(d.severity == "error" for d in diagnostics)
    return EXIT_DIAGNOSTICS if errors else EXIT_OK


def cmd_check(args: argparse.Namespace, out: Console, err: Console) -> int:
    status = EXIT_OK
    for file in args.files:
        spaces, diagnostics = check(file)
        status = max(status, _report(diagnostics, err))
        if not diagnostics:
            out.print(f"{file}: ok ({len(spaces)} space{'s' if len(spaces) != 1 else ''})", highlight=False)
    return status


def _write_atomically(path: Path, text: str) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temp, path.stat().st_mode & 0o7777)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def cmd_fmt(args: argparse.Namespace, out: Console, err: Console) -> int:
    status = EXIT_OK
    for file in args.files:
        path = Path(file)
        try:
            text = read_source(path)
            formatted = format_text(text, file)
        except DeosError as error:
            status = max(status, _report(error.diagnostics, err))
            continue
        if formatted == text:
            continue
        if args.check:
            out.print(f"would reformat {file}", highlight=False)
            status = max(status, EXIT_DIAGNOSTICS)
        else:
            _write_atomically(path, formatted)
            out.print(f"reformatted {file}", highlight=False)
    return status


def cmd_show(args: argparse.Namespace, out: Console, err: Console) -> int:
    spaces, diagnostics = check(args.file)
    status = _report(diagnostics, err)
    if status != EXIT_OK:
        return status
    if args.json:
        out.print_json("[" + ",".join(space.model_dump_json() for space in spaces) + "]")
    else:
        for space in spaces:
            out.print(space_tree(space))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, out: Console, err: Console) -> int:
    out.print_json(json.dumps(ir.Module.model_json_schema()))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deos", description="Token-reduction search spaces: check, format, show.")
    parser.add_argument("--version", action="version", version=f"deos {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check_p = commands.add_parser("check", help="parse, resolve and validate files")
    check_p.add_argument("files", nargs="+", metavar="FILE")
    check_p.set_defaults(run=cmd_check)
    fmt_p = commands.add_parser("fmt", help="rewrite files in canonical form")
    fmt_p.add_argument("--check", action="store_true", help="only list files that would change (exit 1 if any)")
    fmt_p.add_argument("files", nargs="+", metavar="FILE")
    fmt_p.set_defaults(run=cmd_fmt)
    show_p = commands.add_parser("show", help="print the resolved spaces of a file")
    show_p.add_argument("file", metavar="FILE")
    show_p.add_argument("--json", action="store_true", help="JSON instead of a tree")
    show_p.set_defaults(run=cmd_show)
    schema_p = commands.add_parser("schema", help="print the JSON schema of the IR")
    schema_p.set_defaults(run=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None, out: Console | None = None, err: Console | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    out = out or Console(soft_wrap=True)
    err = err or Console(stderr=True, soft_wrap=True)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        return args.run(args, out, err)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001  (any escape here is a bug, reported as such)
        if os.environ.get("DEOS_DEBUG") == "1":
            traceback.print_exc()
        err.print(f"deos: internal error ({type(error).__name__}: {error}); please report it "
                  "(set DEOS_DEBUG=1 for the traceback)", highlight=False, markup=False)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
