#!/usr/bin/env bash
# Set up the environment and run the main job on the embedded default (the shipped HF LLaVA,
# `embedded:llava`), end to end through the generic path a user's model and data take:
#   1. check every bundled space and the EOS search space of the 25% budget (eos_25_llava);
#   2. write the shipped benchmark out as user data (JSONL + PNG): 2000 TRAIN examples for the
#      search, 500 TEST examples for the evaluation (runs/main/data/{train,test});
#   3. compile eos_25 against the shipped model (tracer, block map, bound sites);
#   4. its symbolic cost report (FLOPs per block and site, formulas in the token counts);
#   5. a short search (150 steps) under `tokens.mean <= 25%` on the TRAIN data, its schedule
#      emitted as a model that really drops tokens (runs/main/search-25/emitted);
#   6. the cost of the emitted schedule, then dense vs emitted on the TEST data: accuracy,
#      counted FLOPs, measured latency at batch 1 and 32 (one summary table, also written to
#      runs/main/search-25/evaluation.md and .json);
#   7. the schedule emitted for generation (prefill.pt2: the prefill returning the reduced KV
#      cache), then greedy answers to 16 TEST prompts, emitted beside dense, with each decoder
#      layer's cache length.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -t 1 ] || export COLUMNS="${COLUMNS:-120}"  # readable rich tables in logs
bash scripts/setup-env.sh
SPACE=benchmarks/search_25.deos
MODEL=embedded:llava
DATA=runs/main/data
OUT=runs/main/search-25
.venv/bin/deos check spaces/*.deos benchmarks/*.deos
.venv/bin/deos show "$SPACE"
rm -rf "$DATA" "$OUT"  # the main job's own output: fresh data and a fresh search each run
.venv/bin/deos data export embedded --split train --limit 2000 --out "$DATA/train"
.venv/bin/deos data export embedded --split test --limit 500 --out "$DATA/test"
.venv/bin/deos compile "$SPACE" --space eos_25_llava --model "$MODEL"
.venv/bin/deos cost "$SPACE" --space eos_25_llava --model "$MODEL"
.venv/bin/deos search "$SPACE" --space eos_25_llava --model "$MODEL" --data "$DATA/train" --out "$OUT" --steps 150 --val 0 --emit
.venv/bin/deos cost "$SPACE" --space eos_25_llava --model "$MODEL" --schedule "$OUT/emitted/plan.json"
.venv/bin/deos evaluate "$OUT" --data "$DATA/test" --examples 500
.venv/bin/deos emit "$OUT" --out "$OUT/generative" --generate --batch 1
.venv/bin/deos generate "$OUT/generative" --data "$DATA/test" --examples 16 --max-new-tokens 4 --dense
