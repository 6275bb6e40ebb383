#!/usr/bin/env bash
# The main job: install, then edit examples/red_circle.png and write out/edited.png and a
# before|after image out/before_after.png. Until the built-in trained "shapes" model lands it runs on
# the tiny random test pipeline, whose output is noise (the command says so).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p out
"${PYTHON:-python3}" -m editflow edit examples/red_circle.png \
  --source "a red circle on a gray background" \
  --target "a blue circle on a gray background" \
  --model tiny-flux --method flowedit --seed 0 \
  --output out/edited.png --compare out/before_after.png "$@"
