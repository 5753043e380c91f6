#!/usr/bin/env bash
# Set up the environment and run the whole default test suite (slow studies excluded: -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
exec .venv/bin/python -m pytest "$@"
