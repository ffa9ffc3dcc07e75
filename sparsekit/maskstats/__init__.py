"""Numbers behind the mask pictures: density tiles, row/column profiles, N:M groups,
kept-vs-pruned magnitudes, mask differences and exact zooms.

Plain torch/numpy, so a notebook gets the same numbers the app plots. Masks are bool tensors,
True = kept. A weight with more than two dims (a conv kernel ``[out, in, kh, kw]``) is viewed as
the matrix ``[out, in*kh*kw]`` (``as_matrix``); rows are always output units.

Reductions run on the tensors' own device; only small results (tiles, profiles, histograms,
samples) come back to the CPU as numpy arrays.

One module per kind of picture: ``tiles`` (heatmaps and mask differences), ``entries`` (exact
rows, columns, N:M groups and zoomed blocks), ``groups`` (the kept-position pattern of every N:M
group), ``magnitudes`` (kept vs pruned |w|); ``inputs`` holds the checks they share. Everything
is re-exported here, so ``sparsekit.maskstats.X`` works.
"""
from .entries import MAX_GROUPS, MAX_ZOOM, ZoomBlock, col_density, nm_groups, row_density, zoom
from .groups import (
    MAX_LISTED_PATTERNS,
    GroupPatterns,
    PatternHistogram,
    group_patterns,
    pattern_histogram,
    pattern_label,
)
from .inputs import as_matrix
from .magnitudes import (
    DEFAULT_MAX_POINTS,
    MAX_BINS,
    MagnitudeHistogram,
    MagnitudeSplit,
    magnitude_histograms,
    magnitude_split,
)
from .tiles import DEFAULT_MAX_CELLS, DiffStats, TileGrid, density_tiles, diff_tiles, mask_diff

__all__ = [
    "DEFAULT_MAX_CELLS",
    "DEFAULT_MAX_POINTS",
    "MAX_BINS",
    "MAX_GROUPS",
    "MAX_LISTED_PATTERNS",
    "MAX_ZOOM",
    "DiffStats",
    "GroupPatterns",
    "MagnitudeHistogram",
    "MagnitudeSplit",
    "PatternHistogram",
    "TileGrid",
    "ZoomBlock",
    "as_matrix",
    "col_density",
    "density_tiles",
    "diff_tiles",
    "group_patterns",
    "magnitude_histograms",
    "magnitude_split",
    "mask_diff",
    "nm_groups",
    "pattern_histogram",
    "pattern_label",
    "row_density",
    "zoom",
]
