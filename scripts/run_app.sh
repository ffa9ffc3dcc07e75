#!/usr/bin/env bash
# Install (first time) and start Sparsity Lab on http://localhost:8501
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/serve.py "$@"
