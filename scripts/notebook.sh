#!/usr/bin/env bash
# JupyterLab on the notebook gallery, in the project's environment.
#   bash scripts/notebook.sh            installs JupyterLab into .venv (first time), then serves notebooks/
#   bash scripts/notebook.sh --port N   another port (default 8888); further arguments go to jupyter lab
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
stamp=.venv/.sparsekit-notebook
want="$(cat requirements.txt requirements-notebook.txt | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "installing JupyterLab (requirements-notebook.txt)"
  python -m pip install -q -r requirements-notebook.txt
  echo "$want" > "$stamp"
fi
port=8888
if [ "${1:-}" = "--port" ]; then port="$2"; shift 2; fi
# The notebooks import sparsekit from the checkout: put it on the kernel's path.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
extra=()
[ "$(id -u)" = 0 ] && extra+=(--allow-root)  # JupyterLab refuses root without it (containers, CI)
exec jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --port="$port" --no-browser "${extra[@]}" "$@"
