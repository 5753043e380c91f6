#!/usr/bin/env bash
# Set up the environment and run the main job on the embedded default: check and show every
# bundled space, compile the FastV space against the shipped model, emit the reduced graph
# (model.pt2 + model.py + plan.json) under runs/main/ and print its symbolic cost, then search
# a schedule at 25% of the visual tokens and emit it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -t 1 ] || export COLUMNS="${COLUMNS:-120}"  # readable rich tables in logs
bash scripts/setup-env.sh
.venv/bin/deos check spaces/*.deos
for space in spaces/*.deos; do .venv/bin/deos show "$space"; done
.venv/bin/deos compile spaces/fastv.deos --model embedded
rm -rf runs/main/fastv-embedded
mkdir -p runs/main
.venv/bin/deos emit spaces/fastv.deos --model embedded --out runs/main/fastv-embedded
.venv/bin/deos cost spaces/fastv.deos --model embedded --schedule runs/main/fastv-embedded/plan.json
rm -rf runs/main/search-25
.venv/bin/deos search benchmarks/search_25.deos --space eos_25 --model embedded --data embedded \
    --out runs/main/search-25 --steps 150 --emit
