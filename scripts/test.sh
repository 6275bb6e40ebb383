#!/usr/bin/env bash
# Install editflow with its test extras, then run the default test suite (slow tests excluded;
# add `-m slow` or `-m ""` to run them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY="${PYTHON:-python3}"
exec "$PY" -m pytest -q "$@"
