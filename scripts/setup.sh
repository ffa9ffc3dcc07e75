#!/usr/bin/env bash
# Creates .venv and installs the pinned packages. Usage: scripts/setup.sh [--dev]
#   --dev also installs the test tools and Debian's chromium (for the browser test).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.sparsekit-installed
base="$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)"
want="$base${1:-}"
have="$(cat "$stamp" 2>/dev/null || true)"
# A --dev install also satisfies a plain one.
if [ "$have" != "$want" ] && [ "$have" != "$base--dev" ]; then
  python -m pip install -q --upgrade pip
  # torch first and pinned, so nothing else can pull a different (multi-GB CUDA) build.
  python -m pip install -q torch==2.13.0
  if [ "${1:-}" = "--dev" ]; then
    python -m pip install -q -r requirements-dev.txt
  else
    python -m pip install -q -r requirements.txt
  fi
  echo "$want" > "$stamp"
fi
if [ "${1:-}" = "--dev" ] && ! command -v chromium >/dev/null; then
  echo "installing Debian's chromium for the browser test"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
# Compile the mask kernels once now (cached on disk) so the first click in the app is fast.
python -c "import sparsekit.masks as m; m.warmup()"
