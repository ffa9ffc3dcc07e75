#!/usr/bin/env bash
# The whole GPU suite in one command; writes JSON for the Benchmarks page.
# Usage: scripts/gpu_bench.sh [OUT.json]
# Under 8 minutes by construction: cases that would start after 400 s are recorded as skipped
# ("time budget spent"), and the JSON is rewritten after each suite, so even a killed run leaves
# what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-bench.json}"
py=python; [ -x .venv/bin/python ] && py=.venv/bin/python
exec "$py" -m sparsekit.bench --gpu-all --model-shapes minilm --batches 1,8,64,512,2048,8192 \
  --sizes 1024,4096,8192 --seq-lens 1024,4096,16384 --repeats 20 --time-budget 400 \
  --name "GPU suite" --out "$out"
