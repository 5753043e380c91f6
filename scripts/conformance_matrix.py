"""Regenerate the architecture conformance matrix of docs/compiler.md from the test's results.

    python scripts/conformance_matrix.py

Runs `tests/compiler/test_compiler_zoo.py` (every tiny HF architecture through compile, cost and
emit) with `DEOS_CONFORMANCE_JSON` set, so that each test records the row it measured, then
writes those rows between the matrix markers of docs/compiler.md. When a test fails the document
is left as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "compiler"))

import torch  # noqa: E402
import transformers  # noqa: E402

from zoo_matrix import RECORD, render, replace_matrix  # noqa: E402

DOCUMENT = ROOT / "docs" / "compiler.md"
TEST = ROOT / "tests" / "compiler" / "test_compiler_zoo.py"


def main() -> int:
    with tempfile.TemporaryDirectory() as temp:
        results = Path(temp) / "rows.jsonl"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEST), "-k", "passes_or_is_refused"]
        if subprocess.call(command, cwd=ROOT, env={**os.environ, RECORD: str(results)}) != 0:
            print(f"the conformance test failed: {DOCUMENT} left as it was", file=sys.stderr)
            return 1
        rows = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
    replace_matrix(DOCUMENT, render(rows, f"torch {torch.__version__}, transformers {transformers.__version__}"))
    print(f"wrote the matrix of {len(rows)} architectures into {DOCUMENT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
