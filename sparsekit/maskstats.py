"""Numbers behind the mask pictures: density tiles, row/column profiles, N:M groups,
kept-vs-pruned magnitudes, mask differences and exact zooms.

Plain torch/numpy, so a notebook gets the same numbers the app plots. Masks are bool tensors,
True = kept. A weight with more than two dims (a conv kernel ``[out, in, kh, kw]``) is viewed as
the matrix ``[out, in*kh*kw]`` (``as_matrix``); rows are always output units.

Reductions run on the tensors' own device; only small results (tiles, profiles, histograms,
samples) come back to the CPU as numpy arrays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

DEFAULT_MAX_CELLS = 250_000
"""Default cap on heatmap cells: a few hundred kB of float32 for the browser."""
MAX_ZOOM = 64
"""Largest zoom block side: beyond this, cells are too small to read one by one."""
MAX_GROUPS = 64
"""Most N:M groups the inspector returns at once."""
MAX_BINS = 1000
"""Most histogram bins."""
DEFAULT_MAX_POINTS = 200_000
"""Default cap on the magnitudes ``magnitude_split`` returns."""

# Rows/columns an axis keeps (when it has that many) whatever the tile shape; see _choose_tile.
_MIN_AXIS_TILES_DIVISOR = 8
# Elements per step when streaming a whole layer, so a 4096x16384 weight never needs a full
# float copy plus a full int64 index tensor at once.
_CHUNK = 1 << 22


# ----------------------------------------------------------------------------- validation


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{what} must be a torch tensor or numpy array, got {type(x).__name__}") from None


def as_matrix(t: Any) -> torch.Tensor:
    """View a weight (or mask) as the 2-D matrix the pictures show.

    Args:
        t: tensor or array with at least 2 dims; ``[out, in]`` stays as it is, a conv kernel
            ``[out, in, kh, kw]`` becomes ``[out, in*kh*kw]`` (dims 1.. flattened, in order).

    Returns:
        A 2-D tensor (a view when the input is contiguous).

    Raises:
        ValueError: fewer than 2 dims (e.g. a bias), so there is no matrix to show.
    """
    t = _as_tensor(t, "tensor")
    if t.dim() < 2:
        raise ValueError(
            f"expected a 2-D matrix (or a conv weight [out, in, kh, kw]); got shape {tuple(t.shape)}"
        )
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _check_mask(mask: Any, what: str = "mask") -> torch.Tensor:
    mask = _as_tensor(mask, what)
    if mask.dtype != torch.bool:
        raise ValueError(f"{what} must be a bool tensor (True = kept), got dtype {mask.dtype}")
    return mask


def _check_weight(weight: Any) -> torch.Tensor:
    weight = _as_tensor(weight, "weight")
    if weight.dtype == torch.bool or weight.is_complex():
        raise ValueError(f"weight must be a real-valued tensor, got dtype {weight.dtype}")
    return weight


def _mask_matrix(mask: Any, what: str = "mask") -> torch.Tensor:
    m = as_matrix(_check_mask(mask, what))
    if m.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(m.shape)})")
    return m


def _check_pair(weight: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    weight = _check_weight(weight)
    mask = _check_mask(mask)
    if weight.shape != mask.shape:
        raise ValueError(
            f"weight and mask shapes differ: weight {tuple(weight.shape)} vs mask {tuple(mask.shape)}"
        )
    if weight.dim() < 2:
        as_matrix(weight)  # raises with the shared "expected a 2-D matrix" message
    if weight.numel() == 0:
        raise ValueError(f"weight is empty (shape {tuple(weight.shape)})")
    return weight, mask


def _check_same_shape(mask_a: Any, mask_b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a = _check_mask(mask_a, "mask_a")
    b = _check_mask(mask_b, "mask_b")
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: mask_a {tuple(a.shape)} vs mask_b {tuple(b.shape)}")
    if a.device != b.device:
        b = b.to(a.device)
    return a, b


def _check_int(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


# ----------------------------------------------------------------------------- density tiles


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


def density_tiles(mask: Any, max_cells: int = DEFAULT_MAX_CELLS, *,
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


def row_density(mask: Any) -> np.ndarray:
    """Kept fraction of each row (output unit).

    Args:
        mask: bool tensor, 2-D or a conv mask (viewed through ``as_matrix``).

    Returns:
        float64 array of length ``rows``.
    """
    m = _mask_matrix(mask)
    return m.sum(1, dtype=torch.int64).cpu().numpy() / m.shape[1]


def col_density(mask: Any) -> np.ndarray:
    """Kept fraction of each column (input feature; for conv, input channel x kernel position).

    Args:
        mask: bool tensor, 2-D or a conv mask (viewed through ``as_matrix``).

    Returns:
        float64 array of length ``cols``.
    """
    m = _mask_matrix(mask)
    return m.sum(0, dtype=torch.int64).cpu().numpy() / m.shape[0]


# ----------------------------------------------------------------------------- N:M groups


def nm_groups(weight: Any, mask: Any, m: int, row: int, start_group: int = 0,
              count: int = 8, *, dim: int = 1) -> list[dict]:
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
    w_row = weight[row].movedim(dim - 1, -1).reshape(-1, m)[start_group:stop]
    k_row = mask[row].movedim(dim - 1, -1).reshape(-1, m)[start_group:stop]
    w_row = w_row.detach().to("cpu", torch.float64).numpy()
    k_row = k_row.cpu().numpy()
    out = []
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


# ----------------------------------------------------------------------------- magnitudes


class MagnitudeSplit(NamedTuple):
    """|w| of kept and pruned entries (possibly a sample) and the exact totals."""

    kept_abs: np.ndarray
    pruned_abs: np.ndarray
    n_kept: int
    """Exact number of kept entries in the layer, whatever was sampled."""
    n_pruned: int
    """Exact number of pruned entries in the layer."""


def magnitude_split(weight: Any, mask: Any, *, max_points: int = DEFAULT_MAX_POINTS,
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


def magnitude_histograms(weight: Any, mask: Any, bins: int = 80) -> MagnitudeHistogram:
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
    counts = counts.cpu().numpy().reshape(bins, 2)
    return MagnitudeHistogram(edges.cpu().double().numpy(), counts[:, 1].copy(), counts[:, 0].copy())


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


def mask_diff(mask_a: Any, mask_b: Any) -> DiffStats:
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


def diff_tiles(mask_a: Any, mask_b: Any, max_cells: int = DEFAULT_MAX_CELLS) -> TileGrid:
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


def zoom(weight: Any, mask: Any, row0: int, col0: int, rows: int = 32, cols: int = 32) -> ZoomBlock:
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
