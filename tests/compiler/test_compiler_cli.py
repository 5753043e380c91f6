"""`deos compile`: tables on success; diagnostics and exit 1 (never a traceback) on bad input."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from deos_dsl import cli

SPACES = Path(__file__).resolve().parents[2] / "spaces"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), Console(file=out, width=400, color_system=None), Console(file=err, width=400, color_system=None))
    return code, out.getvalue(), err.getvalue()


def test_compile_prints_tracer_block_map_and_sites():
    code, out, err = run("compile", str(SPACES / "fastv.deos"), "--model", "embedded")
    assert code == 0, err
    assert "tracer: torch.export" in out and "model embedded: " in out
    assert "block map" in out and "bound sites of space `fastv`" in out
    row = next(line for line in out.splitlines() if "decoder.layers.*" in line)
    assert "decoder" in row and " 4 " in row and "[2, 156, 128]" in row and "[0, 144)" in row
    site = next(line for line in out.splitlines() if "decoder.layers.1@0" in line)
    assert "decoder.layers[1]" in site and "add_14" in site


def test_compile_one_space_of_a_file():
    code, out, _ = run("compile", str(SPACES / "sparsevlm.deos"), "--model", "embedded", "--space", "sparsevlm")
    assert code == 0 and "`sparsevlm`" in out and "`sparsevlm_prune`" not in out
    code, _, err = run("compile", str(SPACES / "sparsevlm.deos"), "--model", "embedded", "--space", "nope")
    assert code == 1 and "no space `nope`" in err and "sparsevlm_prune, sparsevlm" in err


def test_compile_every_space_of_a_file():
    """Each space binds on its own graph (binding two spaces on one graph was an internal error)."""
    code, out, err = run("compile", str(SPACES / "sparsevlm.deos"), "--model", "embedded")
    assert code == 0, err
    assert "bound sites of space `sparsevlm_prune`" in out and "bound sites of space `sparsevlm`" in out
    assert out.count("block map") == 1


def test_compile_bad_inputs_exit_1_without_traceback():
    cases = [
        (("--model", "hf:CLIPVisonModel"), "tome.deos", ["unknown model `hf:CLIPVisonModel`", "did you mean `hf:CLIPVisionModel`?"]),
        (("--model", "module:compiler_models:untraceable"), "tome.deos",
         ["cannot trace the model; tried 2 tracer(s):", "  - torch.export: ", "  - torch.fx.symbolic_trace: ", "hint:"]),
        (("--model", "module:compiler_models:raising"), "tome.deos",
         ["factory `compiler_models:raising` raised RuntimeError: weights missing", "hint: fix the factory"]),
        (("--model", "hf:Qwen2Model"), "tome.deos",
         [f"{SPACES / 'tome.deos'}:17:8: error: the model has no `vision.layers`", "^~~~", "hint: this model's block lists"]),
    ]
    for flags, file, expected in cases:
        code, _, err = run("compile", str(SPACES / file), *flags)
        assert code == 1, err
        assert "Traceback" not in err and "internal error" not in err
        for text in expected:
            assert text in err, (text, err)
