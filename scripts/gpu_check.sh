#!/usr/bin/env bash
# The prepared GPU check (see scripts/gpu_check.py): one table of curate's GPU paths.
#   scripts/gpu_check.sh            on a machine with one NVIDIA GPU (at most ~8 minutes)
#   scripts/gpu_check.sh --dry-run  anywhere: checks every step's command and inputs
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/gpu_check.py "$@"
