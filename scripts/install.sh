#!/usr/bin/env bash
# Install editflow (editable) with its test extras into the current Python.
# torch is installed only when missing, pinned to the build this workplace keeps on local disk
# (a bare `torch` would pull the newest release); set EDITFLOW_TORCH to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==${EDITFLOW_TORCH:-2.14.1}"
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "Running pip as the 'root' user" || true
"$PY" -c "import editflow" # fail loudly if the install did not take
