#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine with python3 and apt:
# system libraries for napari's OpenGL canvas under Xvfb (Mesa, Qt's X11 libraries),
# a virtual environment in .venv, and napari-dinoseg with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential python3-dev  # pydensecrf2 compiles at install
  xvfb xauth libgl1 libgl1-mesa-dri libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3
  libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
  libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xinput0
)
PYTHON=${PYTHON:-python3}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
  missing+=("python3-venv")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi

# Reinstall only when the dependency list or this script changed.
stamp=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch + torchvision first, at the releases the project pins (timm needs torchvision)
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q -e ".[testing]"
  echo "$stamp" > .venv/.setup-stamp
fi
echo "setup: ready (.venv/bin/python $(.venv/bin/python -c 'import napari_dinoseg; print(napari_dinoseg.__version__)'))"
