#!/usr/bin/env bash
# Write into ./.wheels the lock's wheels of the packages a GPU machine of this project lacks
# (it has its own CUDA torch, transformers, numpy, pillow, ...; not lark, pydantic and their
# small dependencies): carried to a machine without network, scripts/gpu-check.sh installs them
# from there. PYVER is the GPU machine's Python (default 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${PYVER:-3.12}"
PACKAGES="lark interegular pydantic pydantic-core annotated-types typing-inspection typing-extensions hypothesis \
sortedcontainers setuptools wheel"
rm -rf .wheels && mkdir -p .wheels
for name in $PACKAGES; do
    awk -v want="$name" '/^[^ #]/ { split($0, a, "=="); keep = (tolower(a[1]) == want) } keep' requirements.lock
done | sed '$ s/ *\\$//' > .wheels/lock.txt
python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: --python-version "$PYVER" \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .wheels -r .wheels/lock.txt
du -sh .wheels
