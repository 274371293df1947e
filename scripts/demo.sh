#!/usr/bin/env bash
# Main job. With a display: napari with the sample micrograph, example strokes and the
# dinoseg widget docked. Without one (or with --headless): the same workflow under Xvfb,
# clicking Train / Predict and writing prediction.tif, screenshot.png and summary.json
# to demo-output/ (or the folder given with --out).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -n "${DISPLAY:-}" ] && [[ " $* " != *" --headless "* ]]; then
  exec .venv/bin/python -m napari_dinoseg._widgets.demo "$@"
fi
args=("$@"); [[ " $* " == *" --headless "* ]] || args=(--headless "${args[@]}")
exec xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python -m napari_dinoseg._widgets.demo "${args[@]}"
