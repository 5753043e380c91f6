#!/usr/bin/env bash
# Regenerate requirements.lock: the whole dependency closure of the README's two commands (deos with
# its test extras, the build backend of its editable install, the CPU torch wheel), resolved by uv
# for CPython 3.11 on x86-64 Linux, with the sha256 of every file of every pinned release.
#   bash scripts/lock.sh                     refresh: the newest releases pyproject's ranges allow, now
#   bash scripts/lock.sh --as-of TIMESTAMP   reproduce: only releases uploaded before TIMESTAMP
# The lock's header is the exact `--as-of` command that reproduces it. After a refresh, run the
# suite (bash scripts/test.sh) before committing the new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
TORCH_CPU="torch==2.13.0+cpu"  # the CPU build; a GPU machine keeps its own CUDA torch (setup-env.sh)
AS_OF="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
if [ "${1:-}" = "--as-of" ]; then AS_OF="${2:?--as-of needs a timestamp, e.g. 2026-12-03T08:00:00Z}"; fi
{ echo "$TORCH_CPU"; build_requires; } | uv_compile --generate-hashes --upgrade --exclude-newer "$AS_OF" \
    --custom-compile-command "bash scripts/lock.sh --as-of $AS_OF" -o requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
echo "requirements.lock: $(grep -c '^[a-z0-9].*==' requirements.lock) packages, as of $AS_OF"
