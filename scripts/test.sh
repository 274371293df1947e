#!/usr/bin/env bash
# Set everything up (see scripts/setup.sh) and run the whole test suite, widget tests
# included, in a real napari viewer on a virtual X display (Xvfb + Mesa).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python -m pytest "$@"
