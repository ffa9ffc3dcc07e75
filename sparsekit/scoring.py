"""Old import path of the calibrated methods and channel permutation.

They now live in ``sparsekit.methods`` (one module per method, a registry) and
``sparsekit.permutation``; this module re-exports their public names so existing imports and
notebooks keep working.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from .methods import CALIBRATED_METHODS, CalibratedPrune, MethodOutput, get_method
from .methods.base import ProgressFn
from .methods.calibration import (
    CONTRASTIVE_TEMPERATURE,
    InputStats,
    LayerInputs,
    calibration_loss,
    calibration_size,
    calibration_slice,
    check_calibration,
    main_output,
    run_model,
    sequential_prune,
    transformer_blocks,
)
from .methods.sparsegpt import SPARSEGPT_BLOCK, SPARSEGPT_DAMP, sparsegpt_prune
from .methods.taylor import TAYLOR_BATCH, taylor_scores
from .methods.wanda import row_unstructured_mask, wanda_scores
from .permutation import (
    PERMUTATION_CHECK_SAMPLES,
    ChannelPermutation,
    PermutationSearch,
    nm_kept_magnitude,
    permute_channels,
    search_permutation,
    unstructured_kept_magnitude,
)


def calibrated_prune(
    model: nn.Module,
    names: Sequence[str],
    config: Any,
    calibration: Any,
    *,
    progress: ProgressFn | None = None,
) -> MethodOutput:
    """Run a calibrated method on ``model`` (a copy owned by the caller; Wanda/SparseGPT modify it in place).

    Args:
        model: the module to prune.
        names: qualified names of the layers to prune, in module order.
        config: a ``SparsifyConfig`` whose ``method`` needs calibration.
        calibration: a float tensor batch, or a dict with ``input_ids``/``attention_mask``.
        progress: optional ``progress(fraction, message)`` callback.

    Returns:
        A ``MethodOutput`` with masks (Wanda/SparseGPT) or scores (Taylor).
    """
    method = get_method(config.method)
    if not method.needs_calibration:
        raise ValueError(f"{config.method!r} is not a calibrated method; choose one of {CALIBRATED_METHODS}")
    check_calibration(calibration, config.method)
    return method.run(model, names, config, calibration, progress)


__all__ = [
    "CALIBRATED_METHODS", "CONTRASTIVE_TEMPERATURE", "CalibratedPrune", "ChannelPermutation", "InputStats",
    "LayerInputs", "MethodOutput", "PERMUTATION_CHECK_SAMPLES", "PermutationSearch", "SPARSEGPT_BLOCK",
    "SPARSEGPT_DAMP", "TAYLOR_BATCH", "calibrated_prune", "calibration_loss", "calibration_size",
    "calibration_slice", "check_calibration", "main_output", "nm_kept_magnitude", "permute_channels",
    "row_unstructured_mask", "run_model", "search_permutation", "sequential_prune", "sparsegpt_prune",
    "taylor_scores", "transformer_blocks", "unstructured_kept_magnitude", "wanda_scores",
]
