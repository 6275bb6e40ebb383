#!/usr/bin/env bash
# The main job: install, then edit an example image and write out/edited.png and a before|after
# image out/before_after.png. It runs on the built-in trained "shapes" model (a colour edit of a
# world-version-2 shapes scene at the model's native 64x64); while that model is not in the install it runs on
# the tiny random test pipeline instead, whose output is noise (the command says so).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY="${PYTHON:-python3}"
mkdir -p out
if "$PY" -c "from editflow.models.zoo import shapes_available as a; raise SystemExit(0 if a() else 1)"; then
  args=(examples/shapes_scene.png --model shapes
        --source "a large red circle in the center and a small yellow square in the top left, on a gray background"
        --target "a large blue circle in the center and a small yellow square in the top left, on a gray background")
else
  args=(examples/red_circle.png --model tiny-flux
        --source "a red circle on a gray background"
        --target "a blue circle on a gray background")
fi
"$PY" -m editflow edit "${args[@]}" --method flowedit --seed 0 \
  --output out/edited.png --compare out/before_after.png "$@"
