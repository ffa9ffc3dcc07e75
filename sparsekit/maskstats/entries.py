"""Exact views of individual entries: per-row and per-column kept fractions, the N:M groups of
one output row, and a zoomed block of weights with their keep bits.

Unlike the tiles these are never summarised, so their sizes are capped instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch

from .inputs import TensorLike, _check_int, _check_pair, _mask_matrix, as_matrix

MAX_ZOOM = 64
"""Largest zoom block side: beyond this, cells are too small to read one by one."""
MAX_GROUPS = 64
"""Most N:M groups the inspector returns at once."""


def _kept_fraction(mask: TensorLike, summed_dim: int) -> np.ndarray:
    m = _mask_matrix(mask)
    return m.sum(summed_dim, dtype=torch.int64).cpu().numpy() / m.shape[summed_dim]


def row_density(mask: TensorLike) -> np.ndarray:
    """Kept fraction of each row (output unit).

    Args:
        mask: bool tensor, 2-D or a conv mask (viewed through ``as_matrix``).

    Returns:
        float64 array of length ``rows``.
    """
    return _kept_fraction(mask, 1)


def col_density(mask: TensorLike) -> np.ndarray:
    """Kept fraction of each column: an input feature of a Linear weight, or one input channel
    at one kernel position of a conv weight (the ``as_matrix`` column order).

    Args:
        mask: bool tensor, 2-D or a conv mask.

    Returns:
        float64 array of length ``cols``, one entry per column of ``as_matrix(mask)``.
    """
    return _kept_fraction(mask, 0)


# ----------------------------------------------------------------------------- N:M groups


class NMGroup(TypedDict):
    """One N:M group of a row, as ``nm_groups`` lists it."""

    group: int
    """Its index in the row."""
    columns: list[int]
    """The entries' column indices in the ``as_matrix`` view."""
    weight: list[float]
    """Signed values."""
    abs_weight: list[float]
    kept: list[bool]
    n_kept: int


def nm_groups(weight: TensorLike, mask: TensorLike, m: int, row: int, start_group: int = 0,
              count: int = 8, *, dim: int = 1) -> list[NMGroup]:
    """The N:M groups of one output row, for inspecting which entries each group kept.

    Args:
        weight: ``[out, in]`` Linear or ``[out, in, kh, kw]`` conv weight.
        mask: bool tensor of the same shape (True = kept).
        m: group size M (>= 2); the size of ``dim`` must be a multiple of it.
        row: output unit (index along dim 0).
        start_group: index of the first group within the row.
        count: number of groups (1..``MAX_GROUPS``); clipped at the end of the row.
        dim: the dim groups run along. 1 is ``in`` for a Linear weight and the input channels
            of a conv weight (the ASP convention); -1 gives kernel-wise groups on a conv.

    Returns:
        One dict per group: ``group`` (its index in the row), ``columns`` (the entries' column
        indices in the ``as_matrix`` view, so they match the heatmap and zoom axes),
        ``weight`` (signed values), ``abs_weight``, ``kept`` (bools) and ``n_kept``.

    Raises:
        ValueError: bad mask/weight, ``dim`` not a size multiple of ``m``, or row/group/count
            out of range (the message names the valid range).
    """
    weight, mask = _check_pair(weight, mask)
    nd = weight.dim()
    if isinstance(dim, bool) or not isinstance(dim, int) or not -nd <= dim < nd or dim % nd == 0:
        raise ValueError(f"dim must pick one of dims 1..{nd - 1} of shape {tuple(weight.shape)} "
                         f"(dim 0 is the output rows), got {dim!r}")
    dim = dim % nd
    m = _check_int(m, "m", 2)
    if weight.shape[dim] % m:
        raise ValueError(f"dim {dim} of weight shape {tuple(weight.shape)} has size "
                         f"{weight.shape[dim]}, not a multiple of m={m}")
    row = _check_int(row, "row", 0, weight.shape[0] - 1)
    per_row = math.prod(weight.shape[1:])
    n_groups = per_row // m
    start_group = _check_int(start_group, "start_group", 0, n_groups - 1)
    count = _check_int(count, "count", 1, MAX_GROUPS)
    stop = min(n_groups, start_group + count)

    # Lay the row out so each group is m consecutive entries, carrying the as_matrix column of
    # every entry along; for 2-D weights (dim 1) this is the identity.
    inner = tuple(weight.shape[1:])
    columns = torch.arange(per_row).reshape(inner).movedim(dim - 1, -1).reshape(-1, m)
    w_groups = weight[row].movedim(dim - 1, -1).reshape(-1, m)[start_group:stop]
    k_groups = mask[row].movedim(dim - 1, -1).reshape(-1, m)[start_group:stop]
    w_row = w_groups.detach().to("cpu", torch.float64).numpy()
    k_row = k_groups.cpu().numpy()
    out: list[NMGroup] = []
    for offset, g in enumerate(range(start_group, stop)):
        out.append({
            "group": g,
            "columns": columns[g].tolist(),
            "weight": w_row[offset].tolist(),
            "abs_weight": np.abs(w_row[offset]).tolist(),
            "kept": k_row[offset].tolist(),
            "n_kept": int(k_row[offset].sum()),
        })
    return out


# ----------------------------------------------------------------------------- zoom


@dataclass(frozen=True, eq=False)
class ZoomBlock:
    """An exact sub-block of a weight matrix and its mask."""

    weight: np.ndarray
    """``[rows, cols]`` float64 weight values (pruned entries keep their dense value)."""
    kept: np.ndarray
    """``[rows, cols]`` bool, True = kept."""
    row0: int
    col0: int
    shape: tuple[int, int]
    """Shape of the whole matrix the block was cut from."""

    @property
    def row_index(self) -> np.ndarray:
        """Matrix row of each block row."""
        return np.arange(self.row0, self.row0 + self.weight.shape[0])

    @property
    def col_index(self) -> np.ndarray:
        """Matrix column of each block column."""
        return np.arange(self.col0, self.col0 + self.weight.shape[1])


def zoom(weight: TensorLike, mask: TensorLike, row0: int, col0: int, rows: int = 32, cols: int = 32) -> ZoomBlock:
    """Cut the exact block ``[row0:row0+rows, col0:col0+cols]`` out of a weight and its mask.

    Args:
        weight: ``[out, in]`` weight or a conv weight (viewed through ``as_matrix``).
        mask: bool tensor of the same shape.
        row0: first row, inside the matrix.
        col0: first column, inside the matrix.
        rows: block height, 1..``MAX_ZOOM``; clipped at the bottom edge.
        cols: block width, 1..``MAX_ZOOM``; clipped at the right edge.

    Returns:
        A ``ZoomBlock`` (smaller than asked for when it runs past an edge).

    Raises:
        ValueError: bad weight/mask, a start outside the matrix (shape named), or a size
            outside 1..``MAX_ZOOM``.
    """
    weight, mask = _check_pair(weight, mask)
    w = as_matrix(weight)
    k = as_matrix(mask)
    n_rows, n_cols = w.shape
    rows = _check_int(rows, "rows", 1, MAX_ZOOM)
    cols = _check_int(cols, "cols", 1, MAX_ZOOM)
    for name, value, size in (("row0", row0, n_rows), ("col0", col0, n_cols)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < size:
            raise ValueError(f"{name}={value!r} is outside the {n_rows}x{n_cols} matrix "
                             f"(valid: 0..{size - 1})")
    row0, col0 = int(row0), int(col0)
    # Copies: for a float64 CPU weight .numpy() would alias the (shared) model's parameters.
    block_w = w[row0:row0 + rows, col0:col0 + cols].detach().to("cpu", torch.float64).numpy().copy()
    block_k = k[row0:row0 + rows, col0:col0 + cols].cpu().numpy().copy()
    return ZoomBlock(weight=block_w, kept=block_k, row0=row0, col0=col0, shape=(n_rows, n_cols))
