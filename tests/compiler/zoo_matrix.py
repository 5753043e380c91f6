"""The architecture conformance matrix: each tiny HF architecture (`TINY_MODELS`) put through
what `deos compile` checks (`check_space`) plus the `.pt2` export of `emit`, with one site per
role the block map finds; and the matrix's markdown, which `scripts/conformance_matrix.py`
writes into docs/compiler.md from the results the test records.

A site prunes half of the reducible tokens after the first layer of its stack, ranked by
attention (the CLS row in a vision tower, the last token's in a decoder); where that score is
refused, the same site with `score: norm` (the matrix says which score a row passed with).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from compiler_models import tensors
from deos_dsl.compiler import LoadedModel, build_block_map, resolve_model, trace
from deos_dsl.compiler.trace import LANGUAGE_MODEL
from deos_dsl.errors import DeosError
from deos_dsl.frontend import loads
from deos_dsl.passes.attach_cost import attach_cost
from deos_dsl.pipeline import check_space, export_program

RECORD = "DEOS_CONFORMANCE_JSON"  # the test appends each result here when set
QUERIES = {"vision": "cls", "decoder": "last"}
ATTENTION_REFUSED = "attention scores"  # in the message of a site whose score needs an attention it lacks
REASON_LENGTH = 240  # characters of a refusal kept in the matrix
BEGIN, END = "<!-- conformance matrix: begin -->", "<!-- conformance matrix: end -->"


@dataclass
class Cell:
    """One role of one architecture: `ok` with the emitted tokens, or the refusal's reason."""

    ok: bool
    text: str
    score: str = "attention"
    tokens: tuple[int, int] | None = None
    route: str = ""


@dataclass
class Row:
    architecture: str
    tracer: str = ""
    refused: str = ""  # the model as a whole (trace, block map or cost)
    flops: int = 0  # the dense model's FLOPs, equal to FlopCounterMode's count of the eager model
    cells: dict[str, Cell] = field(default_factory=dict)


def space_text(role: str, score: str) -> str:
    return (f"space conformance {{\n  site {role}.layers[50%] {{\n    activate: on\n    retain: 50%\n"
            f"    score: {score}\n    operator: prune\n  }}\n}}\n")


def reason(error: DeosError) -> str:
    """The first line of a refusal's message, with the list that follows when it introduces one."""
    lines = [line.strip() for line in error.message.splitlines() if line.strip()]
    text = " ".join(lines) if lines[0].endswith(":") else lines[0]
    return text if len(text) <= REASON_LENGTH else text[:REASON_LENGTH - 3] + "..."


def check_role(name: str, role: str, row: Row) -> Cell:
    """`role`'s site on `hf:name` through compile, cost and the `.pt2` export (module docstring)."""
    loaded = resolve_model(f"hf:{name}")
    for score in (f"attention(query: {QUERIES[role]})", "norm"):
        try:
            checked = check_space(loads(space_text(role, score))[0], loaded)
        except DeosError as error:
            if score != "norm" and ATTENTION_REFUSED in error.message:
                continue
            return Cell(False, reason(error), score.partition("(")[0])
        emitted = checked.emitted
        try:
            program = export_program(emitted)
        except DeosError as error:
            return Cell(False, reason(error), score.partition("(")[0])
        with torch.no_grad():
            want, got = tensors(emitted.run()), tensors(program.module()(*emitted.args, **emitted.kwargs))
        assert len(want) == len(got) and all(torch.allclose(w, g, atol=1e-5, rtol=1e-5) for w, g in zip(want, got))
        (n_in, n_out), = emitted.lengths.values()
        assert n_out < n_in, "the emitted site keeps every token"
        assert 0 < checked.flops and checked.dense_flops > 0
        return Cell(True, "ok", score.partition("(")[0], (n_in, n_out), emitted.traced.tracer)
    raise AssertionError("unreachable: the norm score is tried last")


def eager_flops(loaded: LoadedModel) -> int:
    """FlopCounterMode's count of one eager forward (math attention, whose matmuls it sees)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as mode:
        loaded.model(*loaded.args, **loaded.kwargs)
    return mode.get_total_flops()


def conformance_row(name: str) -> Row:
    """The matrix row of `hf:name`: its tracer, blocks and dense cost (checked against
    FlopCounterMode: the live graph's FLOPs plus the dead code eager still runs), then one cell
    per role found."""
    row = Row(name)
    loaded = resolve_model(f"hf:{name}")
    try:
        traced = trace(loaded.model, loaded.args, loaded.kwargs)
        block_map = build_block_map(traced, loaded.roles, loaded.spans)
        cost = attach_cost(block_map, model_name=name)
    except DeosError as error:
        row.refused = reason(error)
        return row
    row.tracer, row.flops = traced.tracer + (", split at the language model" if loaded.prelude else ""), cost.dense_flops()
    dead = sum(cost.evaluate(expr, cost.point()) for expr in cost.dead.values())
    if traced.tracer != LANGUAGE_MODEL:  # the stand-in is not what the eager model runs
        assert row.flops + dead == eager_flops(loaded), "the dense cost differs from FlopCounterMode"
    for role in ("vision", "decoder"):
        if block_map.stack(role) is not None:
            row.cells[role] = check_role(name, role, row)
    return row


def record(row: Row) -> None:
    """Append `row` to the JSON lines file `$DEOS_CONFORMANCE_JSON` when it is set."""
    path = os.environ.get(RECORD)
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(json.dumps(asdict(row)) + "\n")


def _cell(cell: dict | None) -> str:
    if cell is None:
        return "-"
    if not cell["ok"]:
        return f"refused: {cell['text'].replace('|', '/')}"
    n_in, n_out = cell["tokens"]
    return f"ok ({cell['score']} score, {n_in} -> {n_out} tokens)"


def render(rows: list[dict], versions: str) -> str:
    """The matrix in markdown, between the `BEGIN` / `END` markers, rows sorted by name."""
    lines = [BEGIN, "", f"Generated by `python scripts/conformance_matrix.py` ({versions}).", "",
             "| architecture | tracer | vision site | decoder site |", "| --- | --- | --- | --- |"]
    for row in sorted(rows, key=lambda r: r["architecture"]):
        if row["refused"]:
            lines.append(f"| `{row['architecture']}` | refused: {row['refused'].replace('|', '/')} | - | - |")
        else:
            cells = row["cells"]
            lines.append(f"| `{row['architecture']}` | {row['tracer']} | {_cell(cells.get('vision'))} | "
                         f"{_cell(cells.get('decoder'))} |")
    return "\n".join([*lines, "", END])


def replace_matrix(document: Path, matrix: str) -> None:
    """Put `matrix` between the markers of `document` (written whole, in one replace)."""
    text = document.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    temp = document.with_suffix(".md.tmp")
    temp.write_text(text[:start] + matrix + text[end:], encoding="utf-8")
    temp.replace(document)

