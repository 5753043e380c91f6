#!/usr/bin/env bash
# Drift check, outside .ci/run: the whole suite on the NEWEST releases pyproject.toml's ranges allow,
# in a throw-away venv, so an upstream release that breaks deos shows up as this command's output
# (what resolves otherwise than requirements.lock, then pytest's verdict), not as a stranger's red
# suite.
#   bash scripts/test-latest.sh [--lowest] [--torch SPEC] [pytest arguments...]
# --lowest       every direct dependency at its LOWER bound instead: the promise of the ranges
# --torch SPEC   the torch to test with (default: the lock's CPU wheel; a GPU machine's own torch)
set -euo pipefail
cd "$(dirname "$0")/.."
RESOLUTION=highest
TORCH="$(grep -o '^torch==[^ ]*' requirements.lock)"
if command -v nvidia-smi >/dev/null 2>&1; then TORCH="torch==$(python3 -c 'import torch; print(torch.__version__)')"; fi
while [ $# -gt 0 ]; do
    case "$1" in
        --lowest) RESOLUTION=lowest-direct; shift ;;
        --torch) TORCH="${2:?--torch needs a requirement, e.g. torch==2.11.0}"; shift 2 ;;
        *) break ;;
    esac
done
source scripts/lib.sh
UV="$(uv_path)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/deos-drift.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
{ echo "$TORCH"; build_requires; } | uv_compile --resolution "$RESOLUTION" --no-header --no-annotate -o "$WORK/resolved.txt"
"$UV" venv --quiet --python python3.11 "$WORK/venv"
"$UV" pip install --quiet --python "$WORK/venv/bin/python" --no-deps "${TORCH_SOURCES[@]}" --index-strategy unsafe-best-match -r "$WORK/resolved.txt"
"$UV" pip install --quiet --python "$WORK/venv/bin/python" --no-deps --no-build-isolation -e .
echo "drift check ($RESOLUTION, $TORCH), against requirements.lock:"
"$WORK/venv/bin/python" scripts/env_check.py requirements.lock --drift "$WORK/resolved.txt"
if [ "$RESOLUTION" = highest ]; then  # a newer release the resolver could not take is drift too
    echo "newest releases not taken:"
    for name in $("$WORK/venv/bin/python" scripts/env_check.py --declared); do
        newest="$(python3 -m pip index versions "$name" 2>/dev/null | sed -n 's/^[^ ]* (\(.*\))$/\1/p')"
        taken="$(grep -i "^$name==" "$WORK/resolved.txt" | cut -d= -f3)"
        if [ "$name" != torch ] && [ -n "$newest" ] && [ "$newest" != "$taken" ]; then
            why="$({ echo "$TORCH"; build_requires; echo "$name==$newest"; } | uv_compile -o /dev/null 2>&1 | grep -m1 -o 'Because .*' || true)"
            echo "  $name $newest (took $taken): ${why:-not resolved}"
        fi
    done
fi
set +e
DEOS_UNLOCKED="$RESOLUTION" "$WORK/venv/bin/python" -m pytest -p no:cacheprovider "$@"
STATUS=$?
set -e
echo "drift check ($RESOLUTION, $TORCH): pytest exit status $STATUS"
exit "$STATUS"
