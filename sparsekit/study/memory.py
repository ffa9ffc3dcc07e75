"""Will a study's cells fit its workers? Estimated up front from parameter bytes, before any model loads.

A oneshot cell holds, in the worker that runs it, the dense model (kept in the worker's model cache, one
model at a time), the deep copy ``sparsify`` prunes, and per-weight working memory (scores, masks,
Taylor's gradients, Wanda/SparseGPT's calibration statistics): about ``ONESHOT_FACTOR`` times the
parameter bytes. A training cell holds the weights, their gradients, the optimiser state and the masks:
about ``TRAINING_FACTOR`` times. The estimate ignores the Python/torch process itself (a few hundred MB
that every worker pays once).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .spec import StudySpec

ONESHOT_FACTOR = 4.0
"""Peak memory of a oneshot cell / parameter bytes: dense (1) + pruned copy (1) + scores, masks and
calibration statistics (up to 2, Taylor's gradients plus scores being the largest)."""
TRAINING_FACTOR = 5.0
"""Peak memory of a training cell / parameter bytes: weights, gradients, optimiser state (1-2), the STE
dense copy and masks."""
MB = 2**20


def model_param_bytes(spec: str) -> int | None:
    """Parameter bytes of a model, without loading it.

    Args:
        spec: a model spec (``digits:<arch>``, ``minilm``, ``hf:<dir under the model roots>``).

    Returns:
        Bytes as loaded (float32), or None when this machine cannot tell (a hub id or a directory that is
        not here; the loader's own budget check then applies where the cell runs).
    """
    if spec.startswith("digits:"):
        from ..models.digits import build_digits_model

        try:
            module = build_digits_model(spec.split(":", 1)[1])
        except (ValueError, KeyError):
            return None
        return sum(p.numel() * 4 for p in module.parameters())
    if spec == "minilm":
        from ..models.text import minilm_dir

        try:
            return _safetensors_bytes(minilm_dir())
        except ValueError:
            return None
    if spec.startswith("hf:"):
        from ..models.loader import resolve_under_roots

        try:
            path = resolve_under_roots(spec[3:].strip())
        except ValueError:
            return None
        return _safetensors_bytes(path) if path is not None and path.is_dir() else None
    return None


def _safetensors_bytes(path: Path) -> int | None:
    from ..models.weights import loaded_bytes, safetensors_header

    shards = sorted(path.glob("*.safetensors"))
    return sum(loaded_bytes(safetensors_header(f)) for f in shards) if shards else None


def cell_memory_mb(spec: StudySpec) -> dict[str, float | None]:
    """Estimated peak memory of one cell per model of a study.

    Args:
        spec: the study.

    Returns:
        model spec -> MB (None where the size cannot be told here).
    """
    factor = ONESHOT_FACTOR if spec.kind != "training" else TRAINING_FACTOR
    models: Iterable[str] = spec.models if spec.kind != "training" else (f"digits:{spec.train_base().arch}",)
    out: dict[str, float | None] = {}
    for model in models:
        size = model_param_bytes(model)
        out[model] = None if size is None else factor * size / MB
    return out


def check_memory(spec: StudySpec, budget_mb: float, where: str) -> dict[str, float | None]:
    """Refuse a study whose cells would not fit one worker's memory.

    Args:
        spec: the study.
        budget_mb: memory one worker may use, MB.
        where: what the budget is, for the message (e.g. ``per local worker (SPARSEKIT_MEMORY_BUDGET_MB)``).

    Returns:
        The per-model estimates (``cell_memory_mb``).

    Raises:
        ValueError: a model's cells need more than the budget; the message names both numbers.
    """
    factor = ONESHOT_FACTOR if spec.kind != "training" else TRAINING_FACTOR
    parts = ("the dense model, the pruned copy and working memory" if spec.kind != "training"
             else "weights, gradients, optimiser state and masks")
    estimates = cell_memory_mb(spec)
    for model, need in estimates.items():
        if need is not None and need > budget_mb:
            raise ValueError(
                f"cells on {model} need about {_mb(need)} MB each ({factor:g} × {_mb(need / factor)} MB of weights: "
                f"{parts}), over the budget of {_mb(budget_mb)} MB {where}; use a smaller model, fewer workers "
                "per machine or a larger budget")
    return estimates


def _mb(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
