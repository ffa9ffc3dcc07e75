"""Wanda (Sun et al., 2023): score ``|W_ij| * ||X_j||_2`` (``X_j`` = input feature j over all calibration
tokens), compared within each output row (unstructured) or each group of M along the row (N:M).
No weight update. Runs in the shared calibration forward (``calibration.sequential_prune``)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..masks import nm_mask
from .base import Method, register
from .calibration import InputStats, LayerInputs, check_calibration, sequential_prune
from .types import Calibration, MethodOutput, ProgressFn, PruneSettings


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
    s = scores.detach().abs()
    if keep_count in (0, cols) or bool(torch.isnan(s).any()):
        order = torch.sort(s, dim=1, descending=True, stable=True).indices
        keep = torch.zeros(rows, cols, dtype=torch.bool, device=scores.device)
        keep.scatter_(1, order[:, :keep_count], True)
        return keep
    # What a stable descending sort keeps, without sorting: every score above the row's
    # keep_count-th largest, then as many of the scores equal to it as fit, lowest index first.
    # (torch.topk over the smaller side is several times faster than a sort or kthvalue.)
    if keep_count <= cols - keep_count + 1:
        threshold = torch.topk(s, keep_count, dim=1, sorted=False).values.amin(1, keepdim=True)
    else:
        smallest = torch.topk(s, cols - keep_count + 1, dim=1, largest=False, sorted=False).values
        threshold = smallest.amax(1, keepdim=True)
    keep = s > threshold
    tied = s == threshold
    room = keep_count - keep.sum(1)
    crowded = (tied.sum(1) > room).nonzero().squeeze(1)  # rows with more ties than room: rare
    keep.logical_or_(tied)
    if crowded.numel():
        t = tied[crowded]
        first = t.logical_and_(t.cumsum(1) <= room[crowded, None])
        keep[crowded] = (s[crowded] > threshold[crowded]).logical_or_(first)
    return keep



def keep_layer(layer: LayerInputs, weight: torch.Tensor, config: PruneSettings, stats: InputStats,
               notes: dict[str, str]) -> tuple[torch.Tensor, None]:
    """Wanda's mask of one layer from its input norms (no weight update)."""
    W = layer.matrix(weight.detach())
    scores = wanda_scores(W.float(), stats.accumulated().sqrt().float())
    if config.pattern == "nm":
        keep = nm_mask(W, config.n, config.m, scores=scores)
    else:
        keep = row_unstructured_mask(scores, float(config.sparsity))
    return layer.from_matrix(keep), None


def run(model: nn.Module, names: Sequence[str], config: PruneSettings, calibration: Calibration | None,
        progress: ProgressFn | None) -> MethodOutput:
    check_calibration(calibration, "wanda")
    assert calibration is not None
    return sequential_prune(model, names, config, calibration, progress, keep_layer, "norms")


def exact_count_mask(layer: LayerInputs, weight: torch.Tensor, stats: InputStats, count: int) -> torch.Tensor:
    """Wanda's mask pruning exactly ``count`` entries of a layer: each row loses ``count // rows`` of
    its lowest ``|W| * ||X||`` as in the paper, and the ``count % rows`` rows whose weakest kept entry
    is weakest lose one more (ties keep the lower index, as ``row_unstructured_mask``).

    Args:
        layer: the layer's ``LayerInputs`` (grouped view).
        weight: its weight.
        stats: its input norms (``InputStats("norms")``).
        count: weights to prune.

    Returns:
        The mask in the weight's layout, True = kept.
    """
    W = layer.matrix(weight.detach())
    scores = wanda_scores(W.float(), stats.accumulated().sqrt().float())
    rows, cols = scores.shape
    base, extra = divmod(int(count), rows)
    order = torch.sort(scores.abs(), dim=1, descending=True, stable=True).indices
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    keep.scatter_(1, order[:, : cols - base], True)
    if extra:
        weakest_at = order[:, cols - base - 1]
        weakest = scores.gather(1, weakest_at.unsqueeze(1)).squeeze(1)
        pick = torch.sort(weakest, stable=True).indices[:extra]
        keep[pick, weakest_at[pick]] = False
    return layer.from_matrix(keep)


register(Method(
    name="wanda", label="Wanda", needs_calibration=True, run=run, layer_local=True, calibration_order=True,
    keep_layer=keep_layer, stats="norms", count_mask=exact_count_mask,
    help="|w|·‖x‖₂: each weight times the norm of its input feature over the calibration tokens, compared "
         "within a row (or N:M group); no weight update"))
