#!/usr/bin/env bash
# Every GPU check in one command: the CUDA tests (pytest -m cuda), then the whole GPU benchmark
# suite (scripts/gpu_bench.sh, under 8 minutes by its time budget).
# Usage: scripts/gpu_check.sh [OUT_DIR]
#   writes OUT_DIR/cuda-tests.xml (JUnit), OUT_DIR/cuda-tests.txt, OUT_DIR/gpu-bench.json (import it
#   on the Benchmarks page) and OUT_DIR/gpu-bench.txt (the printed tables).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"
py=python; [ -x .venv/bin/python ] && py=.venv/bin/python
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: torch sees no CUDA device; this script is for a machine with an NVIDIA GPU" >&2
  exit 2
fi
status=0
"$py" -m pytest -q -m cuda -p no:cacheprovider --junitxml="$out/cuda-tests.xml" tests 2>&1 | tee "$out/cuda-tests.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
bash scripts/gpu_bench.sh "$out/gpu-bench.json" 2>&1 | tee "$out/gpu-bench.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
exit $status
