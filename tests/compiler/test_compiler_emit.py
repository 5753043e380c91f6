"""Emit: the discretised model as a `.pt2` that reloads and runs WITHOUT deos (an isolated
subprocess where importing deos fails), its code and plan.json; `deos emit` writes atomically
and reports errors clearly."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from rich.console import Console

from compiler_models import VISION_PRUNE, loaded, tensors
from deos_dsl.cli import EXIT_DIAGNOSTICS, EXIT_OK, main
from deos_dsl.compiler.masking import key_logits
from deos_dsl.frontend import load_spaces
from deos_dsl.pipeline import ARTIFACTS, Emitted, compile_emitted, unsafe_payloads, write_artifacts
from relaxed_cases import SPACES, bundled

REPO = Path(__file__).resolve().parents[2]
QWEN = "hf:Qwen2Model"

# Runs in `python -I` (no PYTHONPATH, no cwd on sys.path) with every repository path removed
# and `deos_dsl` made unimportable: the archive must load and run with torch alone.
NO_DEOS = textwrap.dedent("""
    import sys
    sys.path = [p for p in sys.path if not p.startswith({repo!r}) or ".venv" in p]
    sys.modules["deos_dsl"] = None  # any import of deos now raises ImportError
    import torch
    program = torch.export.load({pt2!r})
    inputs = torch.load({inputs!r}, weights_only=True)
    out = program.module()(*inputs["args"], **inputs["kwargs"])
    torch.save(out, {result!r})
    print(sorted(name for name in sys.modules if name.startswith("deos")))
""")


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Emitted, Path]:
    result = compile_emitted(bundled("fastv.deos", "fastv"), loaded(QWEN))
    out = tmp_path_factory.mktemp("emit") / "fastv"
    write_artifacts(result, out)
    return result, out


def test_artifacts_and_plan(emitted: tuple[Emitted, Path]):
    result, out = emitted
    assert sorted(p.name for p in out.iterdir()) == sorted(ARTIFACTS)
    plan = json.loads((out / "plan.json").read_text())
    assert (plan["model"], plan["space"], plan["tracer"]) == (QWEN, "fastv", "torch.export")
    (site,) = plan["sites"]
    assert site["name"] == "layers.1@0" and site["active"] and site["gate"] == 1.0
    assert (site["keep"], site["span"], site["tokens_in"], site["tokens_out"]) == (8, [2, 18], 24, 16)
    assert (site["gamma"], site["tau"], site["rho"], site["nu"], site["theta"]) == (0.0, "inf", 0.0, 1.0, None)
    code = (out / "model.py").read_text()
    assert code == result.graph_module.code and "deos_hard_0" in code
    assert unsafe_payloads(out / "model.pt2") == []


def run_without_deos(pt2: Path, emitted: Emitted, tmp_path: Path) -> list[torch.Tensor]:
    """The outputs of the archive `pt2` on `emitted`'s example inputs, loaded and run by `NO_DEOS`."""
    inputs, answer = tmp_path / "inputs.pt", tmp_path / "out.pt"
    torch.save({"args": list(emitted.args), "kwargs": emitted.kwargs}, inputs)
    script = NO_DEOS.format(repo=str(REPO), pt2=str(pt2), inputs=str(inputs), result=str(answer))
    run = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "['deos_dsl']"  # only the blocked entry: nothing imported
    return list(torch.load(answer, weights_only=True))


def test_pt2_runs_without_deos(emitted: tuple[Emitted, Path], tmp_path: Path):
    result, out = emitted
    got = run_without_deos(out / "model.pt2", result, tmp_path)
    want = tensors(result.run())
    assert [t.shape for t in got] == [t.shape for t in want] == [(2, 16, 32)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), Console(file=out, width=200), Console(file=err, width=200))
    return code, out.getvalue(), err.getvalue()


def test_cli_emits_the_embedded_model_and_refuses_to_overwrite(tmp_path: Path):
    out = tmp_path / "embedded-fastv"
    code, stdout, _ = run_cli("emit", str(SPACES / "fastv.deos"), "--model", "embedded", "--out", str(out))
    assert code == EXIT_OK and "tokens 156 -> 84" in stdout
    plan = json.loads((out / "plan.json").read_text())
    assert plan["tracer"] == "torch.fx.symbolic_trace"  # the static export was re-traced
    program = torch.export.load(out / "model.pt2")
    model = loaded("embedded")
    assert [t.shape for t in program.module()(*model.args)] == [(2, 14)]
    before = (out / "plan.json").read_text()
    code, _, stderr = run_cli("emit", str(SPACES / "fastv.deos"), "--model", "embedded", "--out", str(out))
    assert code == EXIT_DIAGNOSTICS and "already exists" in stderr
    assert (out / "plan.json").read_text() == before


def test_cli_failure_leaves_nothing_behind(tmp_path: Path):
    space = tmp_path / "vision_prune.deos"
    space.write_text(VISION_PRUNE)
    out = tmp_path / "fixed-length"  # an encoder whose container fixes its length: no route emits it
    code, _, stderr = run_cli("emit", str(space), "--model", "module:compiler_models:fixed_length", "--out", str(out))
    assert code == EXIT_DIAGNOSTICS and "STATIC sequence length" in stderr and "hint:" in stderr
    assert list(tmp_path.iterdir()) == [space]


def test_cli_needs_one_space(tmp_path: Path):
    code, _, stderr = run_cli("emit", str(SPACES / "sparsevlm.deos"), "--model", QWEN, "--out", str(tmp_path / "x"))
    assert code == EXIT_DIAGNOSTICS and "emit needs exactly one" in stderr and "--space" in stderr
    code, _, stderr = run_cli("emit", str(SPACES / "fastv.deos"), "--model", QWEN, "--space", "nope",
                              "--out", str(tmp_path / "x"))
    assert code == EXIT_DIAGNOSTICS and "no space `nope`" in stderr
    assert not (tmp_path / "x").exists()


EAGER_MERGE = """space eager_merge {
  defaults {
    activate: on
    retain: 50%
    score: attention(query: last)
    operator: merge(proportional: on, affinity: hidden)
  }
  site decoder.layers[0] {}
  site decoder.layers[1] {}
}
"""


def test_eager_attention_emits_as_the_fused_kernel_does(tmp_path: Path):
    """A decoder computing attention eagerly (matmul + softmax) emits the same reduced model as
    with the fused kernel: the same scores, and the `log size` bias of a proportional merge added
    to its logits (`key_logits`) where the fused kernel gets it in its mask."""
    (tmp_path / "space.deos").write_text(EAGER_MERGE)
    (space,) = load_spaces(tmp_path / "space.deos")
    fused = compile_emitted(space, loaded("hf:Qwen2Model"))
    eager = compile_emitted(space, loaded("module:compiler_models:eager_qwen2"))
    assert eager.lengths == fused.lengths == {"layers.0@0": (24, 16), "layers.1@1": (16, 12)}
    assert any(node.target is key_logits for node in eager.graph_module.graph.nodes)
    with torch.no_grad():
        for a, b in zip(tensors(eager.run()), tensors(fused.run())):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
