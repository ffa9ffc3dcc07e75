"""Wanda (Sun et al., 2023): score ``|W_ij| * ||X_j||_2`` (``X_j`` = input feature j over all calibration
tokens), compared within each output row (unstructured) or each group of M along the row (N:M).
No weight update. Runs in the shared calibration forward (``calibration.sequential_prune``)."""
from __future__ import annotations

import math
from typing import Any

import torch

from ..masks import nm_mask
from .base import Method, MethodOutput, register
from .calibration import InputStats, LayerInputs, check_calibration, sequential_prune


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """Wanda importance ``S_ij = |W_ij| * ||X_j||_2``.

    Args:
        weight: ``[out, in]`` (a conv weight ``[out, *rest]`` takes norms of ``prod(rest)`` entries,
            one per entry of its flattened input patch).
        input_norms: ``[in]`` L2 norm of each input feature over the calibration tokens.

    Returns:
        Scores shaped like ``weight`` (non-negative).
    """
    rest = weight.shape[1:]
    if input_norms.numel() != math.prod(rest):
        raise ValueError(f"{input_norms.numel()} input norms do not fit a weight of shape {tuple(weight.shape)}")
    return weight.detach().abs() * input_norms.to(weight.dtype).reshape(rest).unsqueeze(0)


def row_unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Unstructured mask compared within each row: every row of ``scores`` ``[rows, cols]`` loses its
    ``round(sparsity * cols)`` smallest ``|scores|`` (ties keep the lower index).

    Args:
        scores: ``[rows, cols]``.
        sparsity: fraction pruned per row, ``0 <= sparsity < 1``.

    Returns:
        Bool mask, True = kept.
    """
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    rows, cols = scores.shape
    keep_count = cols - int(round(float(sparsity) * cols))
    order = torch.sort(scores.detach().abs(), dim=1, descending=True, stable=True).indices
    keep = torch.zeros(rows, cols, dtype=torch.bool, device=scores.device)
    keep.scatter_(1, order[:, :keep_count], True)
    return keep



def _keep(layer: LayerInputs, weight: torch.Tensor, config: Any, stats: InputStats, notes: dict[str, str]):
    W = layer.matrix(weight.detach())
    scores = wanda_scores(W.float(), stats.total.sqrt().float())
    if config.pattern == "nm":
        keep = nm_mask(W, config.n, config.m, scores=scores)
    else:
        keep = row_unstructured_mask(scores, float(config.sparsity))
    return layer.from_matrix(keep), None


def run(model, names, config, calibration, progress) -> MethodOutput:
    check_calibration(calibration, "wanda")
    return sequential_prune(model, names, config, calibration, progress, _keep, "norms")


register(Method(
    name="wanda", label="Wanda", needs_calibration=True, run=run, layer_local=True, calibration_order=True,
    help="|w|·‖x‖₂: each weight times the norm of its input feature over the calibration tokens, compared "
         "within a row (or N:M group); no weight update"))
