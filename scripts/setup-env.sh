#!/usr/bin/env bash
# Create (or reuse) .venv with CPython 3.11 and install EXACTLY requirements.lock into it, every file
# checked against the lock's sha256, then deos itself (editable, no resolution): two fresh machines
# get the same releases byte for byte. The lock is the closure (--no-deps); deos's own ranges in
# pyproject.toml only matter to `pip install deos` without the lock.
#
# On a machine with an NVIDIA driver the lock's CPU torch is left out: the venv sees the machine's
# own CUDA torch (or takes the registry's CUDA build when the machine has none) and the rest of the
# lock is installed around it. Ends by comparing the venv with the lock (scripts/env_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
LOCK=requirements.lock
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
PIP=(.venv/bin/python -m pip --disable-pip-version-check install --quiet)
CHECK=(.venv/bin/python scripts/env_check.py "$LOCK")
VENV=(-m venv)
GPU=""
if command -v nvidia-smi >/dev/null 2>&1; then
    GPU=1
    CHECK+=(--except torch --ignore-extra)  # torch and its CUDA libraries are the machine's
    if "$PYTHON" -c "import torch, sys; sys.exit(torch.version.cuda is None)" 2>/dev/null; then
        VENV+=(--system-site-packages)
    fi
fi

stamp() { cat "$LOCK" pyproject.toml | sha256sum | cut -d' ' -f1; echo "gpu=$GPU"; }
version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }
if [ -e .venv ] && [ "$(version .venv/bin/python)" != "$(version "$PYTHON")" ]; then
    echo "setup-env: .venv is not a $PYTHON environment; recreating it" >&2
    rm -rf .venv
fi
if [ -f .venv/.deos-lock ] && [ "$(stamp)" = "$(cat .venv/.deos-lock)" ] && "${CHECK[@]}" >/dev/null 2>&1; then
    "${CHECK[@]}"
    exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" "${VENV[@]}" .venv
if [ -n "$GPU" ]; then
    .venv/bin/python -c "import torch" 2>/dev/null || "${PIP[@]}" "$(sed -n 's/^ *"\(torch>=[^"]*\)".*/\1/p' pyproject.toml)"
    awk '/^[^ #]/ { skip = ($0 ~ /^torch==/) } !skip' "$LOCK" > .venv/lock-without-torch.txt
    "${PIP[@]}" --no-deps --require-hashes -r .venv/lock-without-torch.txt
else
    "${PIP[@]}" --no-deps --require-hashes "${TORCH_SOURCES[@]}" -r "$LOCK"
    mapfile -t EXTRAS < <(.venv/bin/python scripts/env_check.py "$LOCK" --extras)
    if [ "${#EXTRAS[@]}" -gt 0 ]; then .venv/bin/python -m pip uninstall --quiet --yes "${EXTRAS[@]}"; fi
fi
"${PIP[@]}" --no-deps --no-build-isolation -e .
"${CHECK[@]}"
stamp > .venv/.deos-lock
