#!/usr/bin/env bash
# Set up sciinr on a fresh machine: the CPU build of torch first (when no torch is present),
# then sciinr itself with its test extras, in the current Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[test]"
