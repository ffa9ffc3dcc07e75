#!/usr/bin/env bash
# Install (first time) and run the test suite, browser test included.
#   bash scripts/test.sh           the default suite (tests marked slow are skipped)
#   bash scripts/test.sh --all     every test, the slow ones too (what CI runs)
# Further arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export SPARSEKIT_CACHE_DIR="${SPARSEKIT_CACHE_DIR:-$PWD/.cache/test-cache}"
# Lint (the whole tree) and types (sparsekit), with the settings in pyproject.toml: told at once, before the tests.
.venv/bin/ruff check .
.venv/bin/mypy
if [ "${1:-}" = "--all" ]; then
  shift
  exec .venv/bin/python -m pytest -q -m "slow or not slow" "$@"
fi
exec .venv/bin/python -m pytest -q "$@"
