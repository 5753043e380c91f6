#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, from a clean checkout, in under 8 minutes.
#   1. installs what the machine's Python lacks of deos's closure (lark, pydantic, ...) at the
#      lock's pins (hash-checked; from ./.wheels when that folder exists: a machine without
#      network gets the wheels carried in, `bash scripts/gpu-wheels.sh` writes them), then deos
#      itself (editable, no resolution), beside the machine's own CUDA torch and transformers;
#   2. the suite's CUDA tests (bf16 / CUDA paths of the operator and the relaxed search);
#   3. a short bf16 search on the realistic default (the shipped HF LLaVA) under 25% tokens;
#   4. the three speed benchmarks with --device cuda: emitted vs dense (the study's schedules),
#      emitted FastV vs hand-written FastV, and generation (TTFT, decode) dense vs emitted;
#   5. generation and FastV again on a LLaVA-1.5-shaped model with random weights
#      (benchmarks/scaled_llava.py: 576 image tokens, 1.5 B parameters): the shipped model is too
#      small to leave a GPU's launch-overhead regime.
# ONLY="search scaled" runs just those checks (names: cuda-tests search emitted fastv generate scaled).
# Every figure goes to stdout and to $OUT (default runs/gpu-check/) with the GPU's name.
# DEVICE=cpu runs the same steps on the CPU with shorter settings (checks the script itself).
# A failing check does not stop the ones after it (a lent GPU is scarce: one run should bring back
# every figure it can); the script names the failed checks and exits 1 at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-runs/gpu-check}"
rm -rf "$OUT" && mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -d .wheels ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/.wheels"; fi
START=$(date +%s)
step() { echo; echo "== $1 ($(( $(date +%s) - START )) s)"; }
FAILED=()
ONLY="${ONLY:-cuda-tests search emitted fastv generate scaled}"
check() {  # check NAME COMMAND...: run one check (unless ONLY leaves it out), remember it when it fails
    local name="$1"; shift
    case " $ONLY " in *" $name "*) ;; *) echo "(skipped: not in ONLY)"; return 0 ;; esac
    "$@" || { echo "!! check failed: $name (exit $?)"; FAILED+=("$name"); }
}

step "machine"
"$PY" - <<'EOF'
import platform, torch
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), GPU: {name}")
EOF

step "install what is missing (lock pins)"
"$PY" scripts/missing_from_lock.py requirements.lock > "$OUT/missing.txt"
if [ -s "$OUT/missing.txt" ]; then
    cut -d= -f1 "$OUT/missing.txt" | grep -v '^ ' | tr '\n' ' '; echo
    "$PY" -m pip install --quiet --no-deps --require-hashes -r "$OUT/missing.txt"
fi
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e .

if [ "$DEVICE" = cuda ]; then
    STEPS=40 REPEATS=20 SIZES=(1 32) GEN_SIZES=(1 8) EXAMPLES=512 GEOMETRY=1.5b SCALED_SIZES=(1 8)
else
    STEPS=4 REPEATS=2 SIZES=(1 4) GEN_SIZES=(1) EXAMPLES=64 GEOMETRY=smoke SCALED_SIZES=(1)
fi

step "the suite's CUDA tests"
check cuda-tests "$PY" -m pytest -q -p no:logging tests/ops/test_ops_relaxed.py tests/ops/test_ops_unified.py -k cuda -rs

step "a short bf16 search on the shipped HF LLaVA (25% tokens, $STEPS steps)"
search() {
    "$PY" -m deos_dsl.cli data export embedded --split train --limit "$EXAMPLES" --out "$OUT/data" &&
    "$PY" -m deos_dsl.cli search benchmarks/search_25.deos --space eos_25 --model embedded:llava --data "$OUT/data" \
    --out "$OUT/search-25" --steps "$STEPS" --val 0 --device "$DEVICE" --dtype "$([ "$DEVICE" = cuda ] && echo bfloat16 || echo float32)"
}
check search search

step "emitted vs dense, the study's schedules (embedded model)"
check emitted "$PY" benchmarks/bench_emitted_speed.py --device "$DEVICE" --repeats "$REPEATS" --batch-sizes "${SIZES[@]}"
step "emitted FastV vs hand-written FastV (shipped HF LLaVA)"
check fastv "$PY" benchmarks/bench_fastv_handwritten.py --device "$DEVICE" --repeats "$REPEATS" --batch-sizes "${SIZES[@]}"
step "generation: time to first token and decode, dense vs emitted (shipped HF LLaVA, 25% schedules)"
check generate "$PY" benchmarks/bench_generate.py --device "$DEVICE" --repeats "$REPEATS" --batch-sizes "${GEN_SIZES[@]}"
step "the same on a LLaVA-1.5-shaped model with random weights ($GEOMETRY)"
scaled() {
    "$PY" benchmarks/scaled_llava.py --out "$OUT/scaled" --geometry "$GEOMETRY" --device "$DEVICE" &&
    "$PY" benchmarks/bench_generate.py --model "$OUT/scaled" --names prune_25 fastv_25 --device "$DEVICE" \
        --repeats 10 --batch-sizes 1 &&
    "$PY" benchmarks/bench_fastv_handwritten.py --model "$OUT/scaled" --device "$DEVICE" --repeats 10 \
        --batch-sizes "${SCALED_SIZES[@]}"
    local status=$?
    rm -rf "$OUT/scaled"  # gigabytes of random weights
    return $status
}
check scaled scaled
step "done"
if [ ${#FAILED[@]} -gt 0 ]; then echo "failed checks: ${FAILED[*]}"; exit 1; fi
echo "every check passed"
