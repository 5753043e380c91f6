#!/usr/bin/env bash
# Set up the environment and run the main job on the embedded default: check and show every
# bundled space, then compile the FastV space against the shipped model and emit the reduced
# graph (model.pt2 + model.py + plan.json) under runs/main/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
.venv/bin/deos check spaces/*.deos
for space in spaces/*.deos; do .venv/bin/deos show "$space"; done
.venv/bin/deos compile spaces/fastv.deos --model embedded
rm -rf runs/main/fastv-embedded
mkdir -p runs/main
.venv/bin/deos emit spaces/fastv.deos --model embedded --out runs/main/fastv-embedded
