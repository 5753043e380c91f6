#!/usr/bin/env bash
# Set up the environment and run the main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
.venv/bin/deos check spaces/*.deos
for space in spaces/*.deos; do .venv/bin/deos show "$space"; done
