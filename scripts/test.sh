#!/usr/bin/env bash
# Install (first time) and run the whole test suite, browser test included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export SPARSEKIT_CACHE_DIR="${SPARSEKIT_CACHE_DIR:-$PWD/.cache/test-cache}"
exec .venv/bin/python -m pytest -q "$@"
