#!/usr/bin/env bash
# Set up the environment and run the main job on the embedded default, end to end:
#   1. check every bundled space and the EOS search space of the 25% budget (eos_25);
#   2. compile eos_25 against the shipped model (tracer, block map, bound sites);
#   3. its symbolic cost report (FLOPs per block and site, formulas in the token counts);
#   4. a short search (150 steps) under `tokens.mean <= 25%`, its schedule emitted as a graph
#      that really drops tokens (runs/main/search-25/emitted: model.pt2, model.py, plan.json);
#   5. the cost of the emitted schedule, then dense vs emitted on the test subset: accuracy,
#      counted FLOPs, measured latency at batch 1 and 32 (one summary table, also written to
#      runs/main/search-25/evaluation.md and .json).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -t 1 ] || export COLUMNS="${COLUMNS:-120}"  # readable rich tables in logs
bash scripts/setup-env.sh
SPACE=benchmarks/search_25.deos
OUT=runs/main/search-25
.venv/bin/deos check spaces/*.deos benchmarks/*.deos
.venv/bin/deos show "$SPACE"
.venv/bin/deos compile "$SPACE" --space eos_25 --model embedded
.venv/bin/deos cost "$SPACE" --space eos_25 --model embedded
rm -rf "$OUT"  # the main job's own output: a fresh search each run
.venv/bin/deos search "$SPACE" --space eos_25 --model embedded --data embedded --out "$OUT" --steps 150 --emit
.venv/bin/deos cost "$SPACE" --space eos_25 --model embedded --schedule "$OUT/emitted/plan.json"
.venv/bin/deos evaluate "$OUT"
