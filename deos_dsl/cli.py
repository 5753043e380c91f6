"""The `deos` command line: one row of `COMMANDS` per subcommand (name, help, its arguments,
the function that runs it).

Exit codes: 0 ok, 1 diagnostics (or files that `fmt --check` would change), 2 usage error,
70 internal error (a bug: one line on stderr, the traceback only with DEOS_DEBUG=1), 74 the
machine refused a read or write (an `OSError`: permissions, a full disk, a wrong path). Every
`DeosError` a command raises is reported in one place, `report_error`: a `.deos` file's
positioned diagnostics, else `deos: error: MESSAGE` and its hint. To add a subcommand, write
`cmd_x(args, out, err) -> int` and `x_arguments(parser)` and add a row to `COMMANDS`. The
model commands import the compiler (and torch) when they run, so that `check`, `fmt`, `show`
and `schema` start without it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from deos_dsl import __version__
from deos_dsl.errors import DeosError, FileAccessError, SpaceError
from deos_dsl.files import write_text_atomically
from deos_dsl.frontend import ir
from deos_dsl.frontend.api import check, format_text
from deos_dsl.frontend.loader import read_source
from deos_dsl.frontend.render import render_diagnostics, space_tree

EXIT_OK, EXIT_DIAGNOSTICS, EXIT_USAGE, EXIT_INTERNAL, EXIT_FILE_ACCESS = 0, 1, 2, 70, 74

Run = Callable[[argparse.Namespace, Console, Console], int]


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


def cmd_fmt(args: argparse.Namespace, out: Console, err: Console) -> int:
    status = EXIT_OK
    for file in args.files:
        path = Path(file)
        try:
            text = read_source(path)
            formatted = format_text(text, file)
        except SpaceError as error:
            status = max(status, _report(error.diagnostics, err))
            continue
        if formatted == text:
            continue
        if args.check:
            out.print(f"would reformat {file}", highlight=False)
            status = max(status, EXIT_DIAGNOSTICS)
        else:
            write_text_atomically(path, formatted)
            out.print(f"reformatted {file}", highlight=False)
    return status


def _checked_spaces(file: str, err: Console) -> list[ir.Space] | None:
    """The resolved spaces of `file`, or None after printing its errors (warnings are printed too)."""
    spaces, diagnostics = check(file)
    return spaces if _report(diagnostics, err) == EXIT_OK else None


def cmd_show(args: argparse.Namespace, out: Console, err: Console) -> int:
    spaces = _checked_spaces(args.file, err)
    if spaces is None:
        return EXIT_DIAGNOSTICS
    if args.json:
        out.print_json("[" + ",".join(space.model_dump_json() for space in spaces) + "]")
    else:
        for space in spaces:
            out.print(space_tree(space))
    return EXIT_OK


def report_error(error: DeosError, err: Console) -> int:
    """Report a user's error: a `.deos` file's diagnostics, or the message and its hint."""
    if error.diagnostics:
        return _report(error.diagnostics, err)
    err.print(f"deos: error: {error.message}", highlight=False, markup=False)
    if error.hint:
        err.print(f"  hint: {error.hint}", highlight=False, markup=False)
    return EXIT_DIAGNOSTICS


def _selected_spaces(args: argparse.Namespace, err: Console, *, exactly_one: bool) -> list[ir.Space] | None:
    """The checked spaces of `args.space_file` named by `--space` (all without it); None after
    reporting an invalid file, an unknown name, or several spaces where `exactly_one` is asked."""
    spaces = _checked_spaces(args.space_file, err)
    if spaces is None:
        return None
    chosen = [space for space in spaces if args.space in (None, space.name)]
    names = ", ".join(s.name for s in spaces) or "none"
    if not chosen:
        err.print(f"deos: error: no space `{args.space}` in {args.space_file} (spaces: {names})",
                  highlight=False, markup=False)
        return None
    if exactly_one and len(chosen) != 1:
        err.print(f"deos: error: {len(chosen)} spaces in {args.space_file}; {args.command} needs exactly one "
                  f"(spaces: {names})", highlight=False, markup=False)
        err.print("  hint: pick one with --space NAME", highlight=False, markup=False)
        return None
    return chosen


def cmd_compile(args: argparse.Namespace, out: Console, err: Console) -> int:
    from deos_dsl.compiler import resolve_model
    from deos_dsl.compiler.render import block_table, sites_table
    from deos_dsl.pipeline import check_space
    from deos_dsl.pipeline.render import checked_lines

    chosen = _selected_spaces(args, err, exactly_one=False)
    if chosen is None:
        return EXIT_DIAGNOSTICS
    loaded = resolve_model(args.model, args.dtype)
    checked = [check_space(space, loaded) for space in chosen]  # each space on its own trace
    traced = checked[0].bound.traced
    out.print(f"model {loaded.name}: {loaded.source}", highlight=False, markup=False)
    out.print(f"tracer: {traced.tracer}" + "".join(f"\n  (failed first: {t}: {e})" for t, e in traced.failures)
              + f"\ndynamic dims: {traced.dynamic_dims or 'none'}", highlight=False, markup=False)
    out.print(block_table(checked[0].bound.block_map))
    for space, check in zip(chosen, checked):
        out.print(sites_table(space.name, check.bound.sites))
        _print_lines(checked_lines(check), out)
    return EXIT_OK


def _usage(message: str, err: Console) -> int:
    err.print(f"deos: error: {message}", highlight=False, markup=False)
    return EXIT_USAGE


def cmd_emit(args: argparse.Namespace, out: Console, err: Console) -> int:
    from deos_dsl.compiler import resolve_model
    from deos_dsl.pipeline import compile_emitted, write_artifacts
    from deos_dsl.pipeline.generate import write_generative
    from deos_dsl.pipeline.render import emitted_lines

    if Path(args.space_file).is_dir():
        if args.model is not None or args.space is not None:
            return _usage("a search directory fixes its space and model: drop --model / --space", err)
        return _emit_search(Path(args.space_file), None if args.out is None else Path(args.out), args.trust_code, out,
                            args.generate, args.batch)
    if args.model is None or args.out is None:
        return _usage("emitting a .deos file needs --model and --out", err)
    chosen = _selected_spaces(args, err, exactly_one=True)
    if chosen is None:
        return EXIT_DIAGNOSTICS
    loaded = resolve_model(args.model, args.dtype)
    loaded = loaded if args.batch is None else loaded.with_batch(args.batch)
    emitted = compile_emitted(chosen[0], loaded)
    paths = write_generative(emitted, loaded, Path(args.out)) if args.generate else write_artifacts(emitted, Path(args.out))
    _print_lines(emitted_lines(emitted, paths), out)
    return EXIT_OK


def _emit_search(directory: Path, target: Path | None, trust_code: bool, out: Console, generate: bool = False,
                 batch: int | None = None) -> int:
    """`deos emit DIR`: compile the discrete schedule of the search in `directory`."""
    from deos_dsl.pipeline.render import emitted_lines
    from deos_dsl.search.result import emit_result

    _print_lines(emitted_lines(*emit_result(directory, target, trust_code, generate, batch)), out)
    return EXIT_OK


def cmd_generate(args: argparse.Namespace, out: Console, err: Console) -> int:
    from deos_dsl.pipeline.generate import answer_dataset
    from deos_dsl.pipeline.render import answers_lines, answers_table

    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("generating", total=None)
        answers = answer_dataset(Path(args.directory), Path(args.data), args.examples, args.max_new_tokens, args.dense,
                                 args.trust_code, step=lambda done: progress.advance(task, done))
    out.print(answers_table(answers))
    _print_lines(answers_lines(answers), out)
    return EXIT_OK


def _print_lines(lines: list[str], out: Console) -> None:
    for line in lines:
        out.print(line, highlight=False, markup=False)


def cmd_search(args: argparse.Namespace, out: Console, err: Console) -> int:
    from deos_dsl.search.loop import Options, search
    from deos_dsl.search.render import accuracy_line, constraint_lines, repair_line, schedule_table

    chosen = _selected_spaces(args, err, exactly_one=True)
    if chosen is None:
        return EXIT_DIAGNOSTICS
    options = Options(steps=args.steps, batch_size=args.batch, checkpoint_every=args.checkpoint_every,
                      device=args.device, val_size=args.val, dtype=args.dtype, accumulate=args.accumulate,
                      recompute=args.recompute, shard=args.shard, start=dict(args.start))
    outcome = search(chosen[0], args.model, args.data, Path(args.out), options, resume=args.resume, console=err)
    if not outcome.main or outcome.schedule is None:
        return EXIT_OK
    out.print(schedule_table(outcome.schedule))
    _print_lines([*constraint_lines(outcome.schedule, outcome.limits), repair_line(outcome.schedule)], out)
    if outcome.accuracy:
        out.print(accuracy_line(outcome.accuracy, args.val), highlight=False, markup=False)
    out.print(f"search of {outcome.steps_done} steps in {outcome.seconds:.1f} s, peak memory "
              f"{outcome.peak_memory / 2**30:.2f} GiB ({'CUDA allocated' if 'cuda' in outcome.device else 'process RSS'}); "
              f"wrote {args.out}/ (schedule.json, result.pt, search.jsonl, trajectories.png, objective.png, checkpoint.pt)",
              highlight=False, markup=False)
    return _emit_search(Path(args.out), None, True, out) if args.emit else EXIT_OK  # this command's own model


def cmd_cost(args: argparse.Namespace, out: Console, err: Console) -> int:
    from deos_dsl.compiler import resolve_model
    from deos_dsl.cost import Conventions, load_schedule
    from deos_dsl.cost.report import cost_json, cost_tables
    from deos_dsl.pipeline import cost_space

    chosen = _selected_spaces(args, err, exactly_one=True)
    if chosen is None:
        return EXIT_DIAGNOSTICS
    conventions = Conventions(causal_halving=args.causal_halving, all_ops=args.all_ops)
    cost, schedule = cost_space(chosen[0], resolve_model(args.model, args.dtype), conventions)
    if args.schedule is not None:
        schedule = load_schedule(Path(args.schedule), cost)
    if args.json:
        out.print(json.dumps(cost_json(cost, schedule), indent=2), highlight=False, markup=False, soft_wrap=True)
    else:
        out.print(cost_tables(cost, schedule))
    return EXIT_OK


EVALUATE_BATCH_SIZES = (1, 32)


def cmd_evaluate(args: argparse.Namespace, out: Console, err: Console) -> int:
    from deos_dsl.measure import Subject, compare, comparison_table, load_searched, write_evaluation
    from deos_dsl.search.ddp import pick_device

    device = pick_device(args.device)
    with err.status(f"compiling the searched schedule of {args.directory}") as status:
        searched = load_searched(Path(args.directory), data=args.data, device=str(device), trust_code=args.trust_code)
        batch = searched.task.eval_batch(args.examples, "test")
        sizes = tuple(sorted({min(size, len(batch)) for size in EVALUATE_BATCH_SIZES}))
        dense, emitted = (Subject(lambda size, s=subject: s.at(size).to(device), subject.fixed)
                          for subject in searched.subjects())
        comparison = compare(searched.task, dense, emitted, batch, batch_sizes=sizes, repeats=args.repeats,
                             device=device, stage=status.update)
    paths = write_evaluation(searched, comparison)
    out.print(comparison_table(comparison, searched.title))
    out.print(f"wrote {', '.join(str(p) for p in paths)}", highlight=False, markup=False)
    return EXIT_OK


def cmd_data(args: argparse.Namespace, out: Console, err: Console) -> int:
    from deos_dsl.data import export_embedded

    path = export_embedded(args.split, args.limit, Path(args.out))
    out.print(f"wrote {path} ({args.limit} examples of the {args.split} split) and its images", highlight=False,
              markup=False)
    return EXIT_OK


def data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["export"], help="export: write a dataset in the JSONL form")
    parser.add_argument("source", choices=["embedded"], help="embedded: the shipped shapes-VQA benchmark")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="the split (default test)")
    parser.add_argument("--limit", type=POSITIVE, default=1000, metavar="N", help="the first N examples (default 1000)")
    parser.add_argument("--out", required=True, metavar="DIR", help="a new directory: DIR/data.jsonl and DIR/images/")


def evaluate_arguments(evaluate_p: argparse.ArgumentParser) -> None:
    evaluate_p.add_argument("directory", metavar="DIR", help="the --out directory of a finished `deos search`")
    evaluate_p.add_argument("--examples", type=POSITIVE, default=1000, metavar="N",
                            help="test examples for the accuracy (default 1000); the timing runs the first 1 and 32")
    evaluate_p.add_argument("--repeats", type=POSITIVE, default=20, metavar="N",
                            help="interleaved timing rounds, medians reported (default 20)")
    evaluate_p.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate_p.add_argument("--data", metavar="DATA", help=f"the data to measure on (default: the search's own): {DATA_HELP}")
    evaluate_p.add_argument("--trust-code", action="store_true", help=TRUST_HELP)


def count_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= `minimum`, refused with the allowed range in the message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text[:40]!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def budget_percent(text: str) -> float:
    """An argparse type: a percent strictly between 0 and 100."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percent between 0 and 100, got {text[:40]!r}") from None
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"expected a percent strictly between 0 and 100, got {text[:40]}")
    return value


def start_keep(text: str) -> tuple[str, float]:
    """An argparse type: `SITE=RATIO` (`D2=25%`, `P=0.465`), a warm start's keep ratio of a site."""
    site, _, amount = text.partition("=")
    try:
        ratio = float(amount.removesuffix("%")) / (100 if amount.endswith("%") else 1)
    except ValueError:
        ratio = math.nan
    if not site or not 0 < ratio <= 1:
        raise argparse.ArgumentTypeError(f"expected SITE=RATIO with a ratio in (0, 1] or a percent in (0, 100], "
                                         f"e.g. D2=25%, got {text[:40]!r}")
    return site, ratio


POSITIVE, NON_NEGATIVE = count_at_least(1), count_at_least(0)


DEFAULT_MODEL = "embedded:llava"  # `compiler.models.LLAVA`, named here so that `deos check` imports no torch
MODEL_HELP = ("embedded:llava (the shipped HF LLaVA), embedded (the shipped small classifier), a checkpoint directory "
              "(save_pretrained), hf:ORG/NAME (local HF cache, offline), hf:<Architecture> (tiny random config) or "
              "module:pkg.mod:factory")
DATA_HELP = ("embedded (or embedded:shapes_vqa{FAMILY,...}[:N]), a JSONL file of {image, prompt, answer} (or a directory holding "
             "data.jsonl), or module:pkg.mod:factory")
DTYPE_HELP = ("a checkpoint's dtype: auto (default: bfloat16 on CUDA, float32 on the CPU), float32, bfloat16 or "
              "float16")
TRUST_HELP = ("load a `module:` model or data that the search directory's run.json names (this imports and runs that "
              "Python code: only for directories you trust)")
DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda, cuda:<i>"
DTYPES = ["auto", "float32", "bfloat16", "float16"]


def add_space_arguments(parser: argparse.ArgumentParser, space_help: str) -> None:
    """The SPACE file, the `--model` and the `--space` choice of compile / cost / search."""
    parser.add_argument("space_file", metavar="SPACE", help="a .deos file")
    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="MODEL", help=f"{MODEL_HELP} (default {DEFAULT_MODEL})")
    parser.add_argument("--space", metavar="NAME", help=space_help)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)


def cost_arguments(cost_p: argparse.ArgumentParser) -> None:
    add_space_arguments(cost_p, "the space to cost (needed when the file has several)")
    cost_p.add_argument("--schedule", metavar="PLAN", help="a plan.json (from `deos emit`) to evaluate instead of the "
                        "space's own decisions")
    cost_p.add_argument("--json", action="store_true", help="JSON instead of tables")
    cost_p.add_argument("--causal-halving", action="store_true", help="count causal attention as L(L+1)/2 pairs")
    cost_p.add_argument("--all-ops", action="store_true", help="also count pointwise, softmax, norm and reduction ops")


def cmd_schema(args: argparse.Namespace, out: Console, err: Console) -> int:
    out.print_json(json.dumps(ir.Module.model_json_schema()))
    return EXIT_OK


def search_arguments(search_p: argparse.ArgumentParser) -> None:
    add_space_arguments(search_p, "the space to search (needed when the file has several)")
    search_p.add_argument("--data", default="embedded", metavar="DATA", help=f"{DATA_HELP} (default embedded)")
    search_p.add_argument("--out", required=True, metavar="DIR", help="a new directory (or, with --resume, an earlier search's)")
    search_p.add_argument("--device", default="auto", help=DEVICE_HELP)
    search_p.add_argument("--steps", type=POSITIVE, metavar="N", help="steps (default: the space's policy)")
    search_p.add_argument("--batch", type=POSITIVE, default=32, metavar="B", help="global batch size (default 32)")
    search_p.add_argument("--accumulate", type=POSITIVE, default=1, metavar="N",
                          help="run each process's share of the batch as N micro-batches (gradients add up; default 1)")
    search_p.add_argument("--recompute", action="store_true",
                          help="recompute each block's activations in the backward pass (less memory, one more forward)")
    search_p.add_argument("--shard", action="store_true",
                          help="under torchrun: shard the frozen blocks' weights over the processes (FSDP2) instead of "
                               "replicating them (DDP)")
    search_p.add_argument("--checkpoint-every", type=POSITIVE, default=50, metavar="N", help="checkpoint period (default 50)")
    search_p.add_argument("--val", type=NON_NEGATIVE, default=1000, metavar="N", help="validation examples (default 1000; 0 skips)")
    search_p.add_argument("--start", nargs="+", type=start_keep, default=[], metavar="SITE=RATIO",
                          help="warm start from a fixed schedule: each named site (P, D2, V1 or its module path) starts "
                               "keeping RATIO of its entering tokens, every other learned keep 99%%")
    search_p.add_argument("--resume", action="store_true", help="continue the search in --out from its checkpoint")
    search_p.add_argument("--emit", action="store_true", help="then emit the schedule into DIR/emitted")


DEFAULT_BUDGETS = (50.0, 33.0, 25.0, 22.0, 11.0, 3.0)


def cmd_study(args: argparse.Namespace, out: Console, err: Console) -> int:
    from deos_dsl.search.loop import Options
    from deos_dsl.study import StudyPlan, run_study, study_spaces
    from deos_dsl.study.report import summary_table, target_lines

    spaces: list[ir.Space] = []
    for file in args.files:
        checked = _checked_spaces(file, err)
        if checked is None:
            return EXIT_DIAGNOSTICS
        spaces += checked
    command = " ".join(["deos study", *args.files, "--search", args.search, "--model", args.model, "--data", args.data,
                        "--out", args.out, "--budgets", *(f"{b:g}" for b in args.budgets), "--examples", str(args.examples),
                        *(["--steps", str(args.steps)] if args.steps else []), "--seeds", str(args.seeds),
                        *(["--corners", *args.corners] if args.corners else []),
                        *(["--random", *args.random] if args.random else []),
                        *(["--warm", args.warm] if args.warm else []),
                        *(["--ablations", *args.ablations, "--ablation-budgets", *(f"{b:g}" for b in args.ablation_budgets)]
                          if args.ablations else [])])
    chosen = study_spaces(spaces, args.search, tuple(args.corners), tuple(args.random), tuple(args.ablations))
    options = Options(steps=args.steps, batch_size=args.batch, device=args.device, val_size=args.val)
    plan = StudyPlan(chosen.search, chosen.fixed, tuple(b / 100 for b in args.budgets), args.model, args.data,
                     Path(args.out), options, args.examples, args.seeds, chosen.ablations,
                     tuple(b / 100 for b in args.ablation_budgets), args.warm)
    _, comparison, paths = run_study(plan, err, command)
    out.print(summary_table(comparison))
    _print_lines(target_lines(comparison), out)
    out.print(f"wrote {', '.join(str(p) for p in paths)}", highlight=False, markup=False)
    return EXIT_OK


def cmd_patterns(args: argparse.Namespace, out: Console, err: Console) -> int:
    from deos_dsl.files import write_atomically
    from deos_dsl.search.result import write_json
    from deos_dsl.study.consistency import consistency, read_pattern
    from deos_dsl.study.plots import plot_consistency

    result = consistency([read_pattern(Path(directory)) for directory in args.searches])
    table = Table(title="operator patterns: pairs of searches (inside: same data, the seeds' yardstick)")
    for column in ("a", "b", "inside", "same open/closed", "token gap (log2)", "same regime", "gamma gap", "verdict"):
        table.add_column(column)
    def shown(value: float | None, form: str) -> str:
        return "-" if value is None else format(value, form)

    for pair in result["pairs"]:
        table.add_row(pair["a"], pair["b"], "yes" if pair["inside"] else "no", shown(pair["same_active"], ".0%"),
                      shown(pair["token_gap"], ".2f"), shown(pair["same_regime"], ".0%"), shown(pair["gamma_gap"], ".2f"),
                      pair.get("verdict", "-"))
    out.print(table)
    verdict = "agree" if result["consistent"] else "differ"
    out.print(f"patterns across {len(result['groups'])} data groups: they {verdict} (the mean pair across groups against "
              f"the seeds' yardstick; {result['pairs_agreeing']} of {result['pairs_across']} pairs within it one by one)",
              highlight=False, markup=False)
    target = Path(args.out)
    target.mkdir(parents=True, exist_ok=True)
    write_json(target / "consistency.json", result)
    write_atomically(target / "consistency.png", lambda temp: plot_consistency(result, temp))
    out.print(f"wrote {target / 'consistency.json'}, {target / 'consistency.png'}", highlight=False, markup=False)
    return EXIT_OK


def patterns_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("searches", nargs="+", metavar="DIR",
                        help="finished searches of one space at one budget, on two or more --data specs")
    parser.add_argument("--out", required=True, metavar="DIR", help="where consistency.json and consistency.png go")


def study_arguments(study_p: argparse.ArgumentParser) -> None:
    study_p.add_argument("files", nargs="+", metavar="FILE", help=".deos files holding the search space and the fixed rows")
    study_p.add_argument("--search", required=True, metavar="NAME", help="the space to search at each budget")
    study_p.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    study_p.add_argument("--data", required=True, metavar="DATA", help=DATA_HELP)
    study_p.add_argument("--out", required=True, metavar="DIR", help="results directory (finished searches in it are reused)")
    study_p.add_argument("--budgets", nargs="+", type=budget_percent, default=list(DEFAULT_BUDGETS), metavar="PERCENT",
                         help="token budgets, percent of the visual tokens (default: 50 33 25 22 11 3)")
    study_p.add_argument("--corners", nargs="+", default=[], metavar="NAME",
                         help="fixed spaces that are corners of the operator (rows of kind `corner`)")
    study_p.add_argument("--random", nargs="+", default=[], metavar="NAME", help="fixed spaces that keep random tokens")
    study_p.add_argument("--ablations", nargs="+", default=[], metavar="NAME",
                         help="learned variants of the search space, searched once at --ablation-budgets")
    study_p.add_argument("--ablation-budgets", nargs="+", type=budget_percent, default=[11.0, 25.0], metavar="PERCENT",
                         help="budgets of the ablations (default: 11 25)")
    study_p.add_argument("--warm", metavar="NAME", help="also search each seed from this fixed row's schedule at "
                         "its budget; the --val examples choose each seed's row among that search, the search from "
                         "the space's inits and the row itself")
    study_p.add_argument("--seeds", type=POSITIVE, default=1, metavar="N", help="searches per budget, seeds +0..N-1 (default 1)")
    study_p.add_argument("--steps", type=POSITIVE, metavar="N", help="search steps (default: the space's policy)")
    study_p.add_argument("--batch", type=POSITIVE, default=32, metavar="B", help="search batch size (default 32)")
    study_p.add_argument("--val", type=NON_NEGATIVE, default=0, metavar="N",
                         help="validation examples of each search (default 0; > 0 reports the accuracy before repair)")
    study_p.add_argument("--examples", type=POSITIVE, default=1000, metavar="N", help="test examples measured (default 1000)")
    study_p.add_argument("--device", default="auto", help=DEVICE_HELP)


def files_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE")


def fmt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="only list files that would change (exit 1 if any)")
    files_arguments(parser)


def show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("--json", action="store_true", help="JSON instead of a tree")


def compile_arguments(parser: argparse.ArgumentParser) -> None:
    add_space_arguments(parser, "compile only this space of the file (default: all)")


def emit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space_file", metavar="SPACE", help="a .deos file, or the --out directory of a `deos search`")
    parser.add_argument("--model", metavar="MODEL", help=f"{MODEL_HELP} (a .deos file only: a search directory knows its model)")
    parser.add_argument("--out", metavar="DIR", help="a new directory for the artefacts (default for a search: DIR/emitted)")
    parser.add_argument("--space", metavar="NAME", help="the space to emit (needed when the file has several)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    parser.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
    parser.add_argument("--generate", action="store_true", help="also write prefill.pt2, the prefill that returns every "
                        "decoder layer's reduced KV cache, for `deos generate` (HF generative models)")
    parser.add_argument("--batch", type=POSITIVE, default=None, metavar="B",
                        help="example rows the static programs take (default: the model's example inputs)")


def generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="an emitted directory written with `deos emit --generate`")
    parser.add_argument("--data", required=True, metavar="JSONL", help="prompts: one JSON object per line with `prompt`, "
                        "`image` (a path relative to the file) and optionally `answer`, or a directory holding data.jsonl")
    parser.add_argument("--examples", type=POSITIVE, default=None, metavar="N", help="the first N prompts (default: all)")
    parser.add_argument("--max-new-tokens", type=POSITIVE, default=16, metavar="N", help="tokens per answer (default 16)")
    parser.add_argument("--dense", action="store_true", help="also generate with the dense checkpoint, to compare")
    parser.add_argument("--trust-code", action="store_true", help=TRUST_HELP)


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command without arguments."""


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, its one-line help, its arguments and what runs it."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Run


COMMANDS = (
    Command("check", "parse, resolve and validate files", files_arguments, cmd_check),
    Command("fmt", "rewrite files in canonical form", fmt_arguments, cmd_fmt),
    Command("show", "print the resolved spaces of a file", show_arguments, cmd_show),
    Command("compile", "trace a model, map its blocks and bind a space's sites", compile_arguments, cmd_compile),
    Command("emit", "emit a space's (or a search's) reduced model: model.pt2, model.py, plan.json", emit_arguments,
            cmd_emit),
    Command("generate", "answer a JSONL of prompts with an emitted model (prefill with the plan, decode on the reduced "
            "KV cache), optionally beside the dense model", generate_arguments, cmd_generate),
    Command("search", "search a space on a model: train its operator parameters, then discretise under the budgets",
            search_arguments, cmd_search),
    Command("cost", "symbolic FLOPs of a space on a model: per block and site, dense vs reduced", cost_arguments,
            cmd_cost),
    Command("evaluate", "a finished search's emitted graph against the dense model: accuracy, counted FLOPs, latency",
            evaluate_arguments, cmd_evaluate),
    Command("study", "search a space and fit every baseline at several token budgets; results table, Pareto plot "
            "and operator patterns", study_arguments, cmd_study),
    Command("patterns", "do searches on different data discover the same operator pattern? pairs, verdict, plot",
            patterns_arguments, cmd_patterns),
    Command("data", "write the shipped benchmark as a JSONL dataset (images as PNG)", data_arguments, cmd_data),
    Command("schema", "print the JSON schema of the IR", no_arguments, cmd_schema),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deos", description="Token-reduction search spaces as a language: check and "
                                     "format them, compile them onto a model, cost, search, emit and evaluate them.")
    parser.add_argument("--version", action="version", version=f"deos {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help)
        command.arguments(sub)
        sub.add_argument("--import-path", action="append", default=[], metavar="DIR",
                         help="a further folder that `import` may read from (repeatable; also DEOS_IMPORT_PATH)")
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None, out: Console | None = None, err: Console | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    out = out or Console(soft_wrap=True)
    err = err or Console(stderr=True, soft_wrap=True)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # deos shows its own progress (rich)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if isinstance(exit_.code, int) else EXIT_USAGE
    saved = os.environ.get("DEOS_IMPORT_PATH")
    if args.import_path:  # the loader reads it (deos_dsl.frontend.loader.import_roots); restored below
        os.environ["DEOS_IMPORT_PATH"] = os.pathsep.join([*args.import_path, *([saved] if saved else [])])
    try:
        return args.run(args, out, err)
    except DeosError as error:
        return report_error(error, err)
    except KeyboardInterrupt:
        return 130
    except OSError as error:  # the environment's (a permission, a full disk, a wrong path), not a bug
        report_error(FileAccessError.of(error), err)
        return EXIT_FILE_ACCESS
    except Exception as error:  # noqa: BLE001  (any escape here is a bug, reported as such)
        if os.environ.get("DEOS_DEBUG") == "1":
            traceback.print_exc()
        err.print(f"deos: internal error ({type(error).__name__}: {error}); please report it "
                  "(set DEOS_DEBUG=1 for the traceback)", highlight=False, markup=False)
        return EXIT_INTERNAL
    finally:
        if saved is None:
            os.environ.pop("DEOS_IMPORT_PATH", None)
        else:
            os.environ["DEOS_IMPORT_PATH"] = saved


if __name__ == "__main__":
    sys.exit(main())
