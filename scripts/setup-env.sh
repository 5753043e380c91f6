#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install deos into it.
# CPU machines get the pinned CPU wheel torch==2.13.0; a machine with an NVIDIA driver keeps
# the registry's CUDA build. Override with DEOS_TORCH_SPEC="torch==X.Y" if you need another.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if [ -z "${DEOS_TORCH_SPEC:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then DEOS_TORCH_SPEC="torch>=2.4"; else DEOS_TORCH_SPEC="torch==2.13.0"; fi
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "$DEOS_TORCH_SPEC"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
