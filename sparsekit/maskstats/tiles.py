"""Heatmap summaries: a mask (or the difference of two masks) as the True fraction per tile, and
the agreement counts of two masks.

The browser cannot draw one cell per weight of a large layer, so big matrices are summarised in
tiles chosen to fit a cell budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .inputs import TensorLike, _check_int, _check_same_shape, _mask_matrix

DEFAULT_MAX_CELLS = 250_000
"""Default cap on heatmap cells: a few hundred kB of float32 for the browser."""

# Rows/columns an axis keeps (when it has that many) whatever the tile shape; see _choose_tile.
_MIN_AXIS_TILES_DIVISOR = 8


@dataclass(frozen=True, eq=False)
class TileGrid:
    """A 2-D bool matrix summarised as the fraction of True cells in each tile.

    For a keep-mask that is the kept fraction; for ``diff_tiles`` the fraction of differing cells.
    """

    density: np.ndarray
    """``[grid_rows, grid_cols]`` float64 in [0, 1]; edge tiles average only the cells inside."""
    tile_rows: int
    """Matrix rows covered by one tile (the last tile row may cover fewer)."""
    tile_cols: int
    """Matrix columns covered by one tile (the last tile column may cover fewer)."""
    shape: tuple[int, int]
    """Shape of the matrix that was summarised."""
    n_true: int
    """True cells in the whole matrix (exact, not rebuilt from the rounded densities)."""

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self.density.shape)

    @property
    def row_starts(self) -> np.ndarray:
        """First matrix row of each tile row."""
        return np.arange(self.density.shape[0]) * self.tile_rows

    @property
    def col_starts(self) -> np.ndarray:
        """First matrix column of each tile column."""
        return np.arange(self.density.shape[1]) * self.tile_cols

    def cell_counts(self) -> np.ndarray:
        """Matrix cells inside each tile, ``[grid_rows, grid_cols]`` int64."""
        rows = np.minimum(self.tile_rows, self.shape[0] - self.row_starts)
        cols = np.minimum(self.tile_cols, self.shape[1] - self.col_starts)
        return np.outer(rows, cols).astype(np.int64)


def _choose_tile(rows: int, cols: int, max_cells: int) -> tuple[int, int]:
    """Smallest tiles whose grid fits ``max_cells``, close to square where the matrix allows.

    Square tiles keep the picture's proportions; but a skinny matrix (4 x 1M) with square tiles
    collapses to a single tile row, so each axis keeps at least min(length, sqrt(max_cells)/8)
    tiles and tiles stretch along the long axis instead.
    """
    if rows * cols <= max_cells:
        return 1, 1
    floor_tiles = max(1, math.isqrt(max_cells) // _MIN_AXIS_TILES_DIVISOR)
    # A tile taller than rows // floor_tiles would leave fewer than ~floor_tiles tile rows.
    max_tr = max(1, rows // floor_tiles)
    max_tc = max(1, cols // floor_tiles)
    best: tuple[tuple[float, int], tuple[int, int]] | None = None
    # Below rows / max_cells even a one-column grid is too tall.
    for tr in range(max(1, -(-rows // max_cells)), max_tr + 1):
        if best is not None and best[0][0] == 2.0 and tr >= best[0][1]:
            break  # every later tile is at least tr cells, so none can beat a square-enough best
        grid_rows = -(-rows // tr)
        allowed_cols = max_cells // grid_rows
        if allowed_cols < 1:
            continue
        tc = -(-cols // allowed_cols)  # narrowest tile with ceil(cols / tc) <= allowed_cols
        if tc > max_tc:
            continue
        aspect = max(tr / tc, tc / tr)
        # Any shape up to 2:1 counts as square enough; among those the finest wins. Past 2:1
        # (only skinny matrices get there) the least stretched wins.
        key = (max(aspect, 2.0), tr * tc)
        if best is None or key < best[0]:
            best = (key, (tr, tc))
    if best is None:  # unreachable by construction (floor_tiles**2 <= max_cells / 64); be safe
        side = math.ceil(math.sqrt(rows * cols / max_cells))
        while -(-rows // side) * -(-cols // side) > max_cells:
            side += 1
        return side, side
    return best[1]


def _tile_counts(m: torch.Tensor, tr: int, tc: int) -> torch.Tensor:
    rows, cols = m.shape
    grid_rows, grid_cols = -(-rows // tr), -(-cols // tc)
    if tr == 1 and tc == 1:
        return m.to(torch.int64)
    if grid_rows * tr != rows or grid_cols * tc != cols:
        # Zero padding adds no True cells; the cell counts used for averaging ignore it.
        padded = torch.zeros(grid_rows * tr, grid_cols * tc, dtype=torch.bool, device=m.device)
        padded[:rows, :cols] = m
        m = padded
    elif not m.is_contiguous():
        m = m.contiguous()
    # Two one-axis sums are about twice as fast as one sum over dims (1, 3) on big masks.
    per_row = m.view(grid_rows * tr, grid_cols, tc).sum(-1, dtype=torch.int32)
    return per_row.view(grid_rows, tr, grid_cols).sum(1, dtype=torch.int64)


def _tiles_of(m: torch.Tensor, max_cells: int, tile: tuple[int, int] | None) -> TileGrid:
    rows, cols = m.shape
    if tile is None:
        tr, tc = _choose_tile(rows, cols, max_cells)
    else:
        if not isinstance(tile, (tuple, list)) or len(tile) != 2:
            raise ValueError(f"tile must be a (rows, cols) pair, got {tile!r}")
        tr = _check_int(tile[0], "tile rows", 1)
        tc = _check_int(tile[1], "tile cols", 1)
        cells = -(-rows // tr) * -(-cols // tc)
        if cells > max_cells:
            raise ValueError(
                f"tile {tr}x{tc} on a {rows}x{cols} matrix gives {cells:,} tiles, over max_cells={max_cells:,}"
            )
    counts = _tile_counts(m, tr, tc).cpu().numpy()
    tile_rows = np.minimum(tr, rows - np.arange(counts.shape[0]) * tr)
    tile_cols = np.minimum(tc, cols - np.arange(counts.shape[1]) * tc)
    density = counts / np.outer(tile_rows, tile_cols)
    density.setflags(write=False)  # the dataclass is frozen; so is its array
    return TileGrid(density=density, tile_rows=tr, tile_cols=tc, shape=(rows, cols),
                    n_true=int(counts.sum()))


def density_tiles(mask: TensorLike, max_cells: int = DEFAULT_MAX_CELLS, *,
                  tile: tuple[int, int] | None = None) -> TileGrid:
    """Kept fraction of a mask per tile, with no more than ``max_cells`` tiles.

    Args:
        mask: bool tensor (True = kept), 2-D or a conv mask (viewed through ``as_matrix``).
        max_cells: most tiles allowed (>= 1). A mask that already fits gets 1x1 tiles.
        tile: force this ``(tile_rows, tile_cols)`` size instead of choosing one; its grid must
            still fit ``max_cells``.

    Returns:
        A ``TileGrid``; ``density[i, j]`` is the kept fraction of the cells in rows
        ``[i*tile_rows, (i+1)*tile_rows)`` and columns ``[j*tile_cols, (j+1)*tile_cols)``,
        clipped to the matrix.

    Raises:
        ValueError: non-bool or empty mask, fewer than 2 dims, ``max_cells < 1``, or a forced
            tile whose grid does not fit.
    """
    max_cells = _check_int(max_cells, "max_cells", 1)
    return _tiles_of(_mask_matrix(mask), max_cells, tile)


# ----------------------------------------------------------------------------- mask diffs


@dataclass(frozen=True)
class DiffStats:
    """How two masks of the same shape agree, position by position."""

    both_kept: int
    only_a: int
    """Kept in A, pruned in B."""
    only_b: int
    """Kept in B, pruned in A."""
    both_pruned: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return self.both_kept + self.only_a + self.only_b + self.both_pruned

    @property
    def sad(self) -> int:
        """Sum of absolute differences of the keep bits (positions that differ)."""
        return self.only_a + self.only_b

    @property
    def fraction(self) -> float:
        """``sad / numel``."""
        return self.sad / self.numel if self.numel else 0.0


def mask_diff(mask_a: TensorLike, mask_b: TensorLike) -> DiffStats:
    """Agreement counts of two masks (any shape, the same for both).

    Args:
        mask_a: bool tensor (True = kept).
        mask_b: bool tensor of the same shape.

    Returns:
        ``DiffStats`` with the four counts; ``.sad`` and ``.fraction`` derive from them.

    Raises:
        ValueError: non-bool masks or different shapes (both shapes named).
    """
    a, b = _check_same_shape(mask_a, mask_b)
    n_a = int(a.sum())
    n_b = int(b.sum())
    both = int((a & b).sum())
    numel = a.numel()
    return DiffStats(both_kept=both, only_a=n_a - both, only_b=n_b - both,
                     both_pruned=numel - n_a - n_b + both, shape=tuple(a.shape))


def diff_tiles(mask_a: TensorLike, mask_b: TensorLike, max_cells: int = DEFAULT_MAX_CELLS) -> TileGrid:
    """Fraction of positions where two masks differ, per tile.

    Args:
        mask_a: bool tensor, 2-D or a conv mask (viewed through ``as_matrix``).
        mask_b: bool tensor of the same shape.
        max_cells: most tiles allowed (>= 1).

    Returns:
        A ``TileGrid`` whose ``density`` is the differing fraction per tile (``n_true`` is SAD).

    Raises:
        ValueError: non-bool masks, different shapes, fewer than 2 dims or ``max_cells < 1``.
    """
    a, b = _check_same_shape(mask_a, mask_b)
    max_cells = _check_int(max_cells, "max_cells", 1)
    return _tiles_of(_mask_matrix(a ^ b, "mask difference"), max_cells, None)
