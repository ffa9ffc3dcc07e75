"""|w| of kept against pruned entries: a (sampled) split of the values, and exact histograms
streamed over the whole layer."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .inputs import TensorLike, _check_int, _check_pair

MAX_BINS = 1000
"""Most histogram bins."""
DEFAULT_MAX_POINTS = 200_000
"""Default cap on the magnitudes ``magnitude_split`` returns."""

# Elements per step when streaming a whole layer, so a 4096x16384 weight never needs a full
# float copy plus a full int64 index tensor at once.
_CHUNK = 1 << 22


class MagnitudeSplit(NamedTuple):
    """|w| of kept and pruned entries (possibly a sample) and the exact totals."""

    kept_abs: np.ndarray
    pruned_abs: np.ndarray
    n_kept: int
    """Exact number of kept entries in the layer, whatever was sampled."""
    n_pruned: int
    """Exact number of pruned entries in the layer."""


def magnitude_split(weight: TensorLike, mask: TensorLike, *, max_points: int = DEFAULT_MAX_POINTS,
                    seed: int = 0) -> MagnitudeSplit:
    """|w| of the kept entries and of the pruned entries.

    Args:
        weight: weight tensor of any shape with at least 2 dims.
        mask: bool tensor of the same shape (True = kept).
        max_points: most values returned in total (>= 1). A larger layer is subsampled: a
            uniform random sample of positions, so the kept/pruned proportion of the sample
            matches the layer up to sampling noise.
        seed: seed of the sample, so the same call draws the same points.

    Returns:
        ``MagnitudeSplit(kept_abs, pruned_abs, n_kept, n_pruned)``: float64 arrays (in flat
        index order) and the exact counts over the whole layer.

    Raises:
        ValueError: bad weight/mask or ``max_points < 1``.
    """
    weight, mask = _check_pair(weight, mask)
    max_points = _check_int(max_points, "max_points", 1)
    flat_w = weight.detach().reshape(-1)
    flat_m = mask.reshape(-1)
    numel = flat_w.numel()
    n_kept = int(flat_m.sum())
    if numel > max_points:
        # Floyd-style sampling without replacement: O(max_points), no permutation of numel.
        idx = np.sort(np.random.default_rng(seed).choice(numel, size=max_points, replace=False))
        idx_t = torch.from_numpy(idx).to(flat_w.device)
        flat_w = flat_w.index_select(0, idx_t)
        flat_m = flat_m.index_select(0, idx_t)
    values = flat_w.abs().to("cpu", torch.float64).numpy()
    keep = flat_m.cpu().numpy()
    return MagnitudeSplit(values[keep], values[~keep], n_kept, numel - n_kept)


class MagnitudeHistogram(NamedTuple):
    """Exact histograms of |w| for kept and pruned entries on shared bins."""

    edges: np.ndarray
    """``bins + 1`` edges from 0 to max |w|; bins are [lo, hi), the last one [lo, hi]."""
    kept: np.ndarray
    """int64 counts of kept entries per bin."""
    pruned: np.ndarray
    """int64 counts of pruned entries per bin."""


def magnitude_histograms(weight: TensorLike, mask: TensorLike, bins: int = 80) -> MagnitudeHistogram:
    """Histograms of |w| for kept and pruned entries over the whole layer (no sampling).

    Streams the layer in chunks, so the browser gets ``2 * bins`` numbers instead of one per
    weight and the counts are exact for any layer size.

    Args:
        weight: weight tensor of any shape with at least 2 dims.
        mask: bool tensor of the same shape (True = kept).
        bins: number of equal-width bins (1..``MAX_BINS``) from 0 to max |w|.

    Returns:
        ``MagnitudeHistogram(edges, kept, pruned)``; same binning as
        ``numpy.histogram(values, bins=edges)``.

    Raises:
        ValueError: bad weight/mask, bins out of range, or NaN/inf weights.
    """
    weight, mask = _check_pair(weight, mask)
    bins = _check_int(bins, "bins", 1, MAX_BINS)
    flat_w = weight.detach().reshape(-1)
    flat_m = mask.reshape(-1)
    top = 0.0
    for start in range(0, flat_w.numel(), _CHUNK):
        chunk = flat_w[start:start + _CHUNK].abs().float()
        if not bool(torch.isfinite(chunk).all()):
            raise ValueError("weight contains NaN or inf; its magnitudes cannot be binned")
        top = max(top, float(chunk.max()))
    # An all-zero layer still gets a readable axis.
    edges = torch.linspace(0.0, top if top > 0 else 1.0, bins + 1, dtype=torch.float32,
                           device=flat_w.device)
    edges[-1] = top if top > 0 else 1.0
    inner = edges[1:-1].contiguous()
    counts = torch.zeros(2 * bins, dtype=torch.int64, device=flat_w.device)
    for start in range(0, flat_w.numel(), _CHUNK):
        chunk = flat_w[start:start + _CHUNK].abs().float()
        # right=True puts x in bin i when edges[i] <= x < edges[i+1]; values equal to the top
        # edge land in the last bin, exactly like numpy.histogram.
        which = torch.bucketize(chunk, inner, right=True)
        counts += torch.bincount(which * 2 + flat_m[start:start + _CHUNK].long(), minlength=2 * bins)
    table = counts.cpu().numpy().reshape(bins, 2)  # [bin, (pruned, kept)]
    return MagnitudeHistogram(edges.cpu().double().numpy(), table[:, 1].copy(), table[:, 0].copy())
