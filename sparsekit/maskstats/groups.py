"""Which positions each N:M group kept: a pattern code per (row, group), and how often each pattern
occurs over a whole layer.

At full scale a 2:4 mask looks like noise; per group it is one of only C(4, 2) = 6 patterns, and
their frequencies say whether the pruning favours some positions (a skewed histogram) or not.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .inputs import TensorLike, _check_int, _check_mask, _mask_matrix

MAX_LISTED_PATTERNS = 256
"""Most patterns listed with their count even when unused; beyond it only patterns that occur
are listed (C(32, 16) patterns cannot all be drawn)."""


def pattern_label(positions: tuple[int, ...] | list[int], m: int) -> str:
    """A kept-position pattern as ``m`` characters, position 0 first: 1 = kept, 0 = pruned.

    Args:
        positions: kept positions within the group (0-based).
        m: group size.

    Returns:
        E.g. ``"1100"`` for positions (0, 1) of a group of 4.
    """
    kept = set(positions)
    return "".join("1" if j in kept else "0" for j in range(m))


@dataclass(frozen=True, eq=False)
class GroupPatterns:
    """The kept pattern of every N:M group of a mask."""

    codes: np.ndarray
    """``[rows, groups]`` int64: bit j is set when position j of the group is kept."""
    m: int
    """Group size."""

    @property
    def n_kept(self) -> np.ndarray:
        """``[rows, groups]``: number kept in each group."""
        kept = np.zeros(self.codes.shape, dtype=np.int64)
        for j in range(self.m):
            kept += (self.codes >> j) & 1
        return kept


@dataclass(frozen=True, eq=False)
class PatternHistogram:
    """How many groups kept each pattern."""

    patterns: list[str]
    """Pattern labels (``pattern_label``), ordered by number kept, then as
    ``itertools.combinations`` orders the kept positions (``1100, 1010, 1001, 0110, 0101, 0011``)."""
    counts: np.ndarray
    """int64, groups with each pattern (0 for a possible pattern no group used)."""
    n_kept: np.ndarray
    """int64, number kept in each pattern."""
    m: int
    """Group size."""
    groups: int
    """Total number of groups (the sum of ``counts``)."""
    complete: bool
    """True when every pattern with an occurring kept count is listed, used or not."""


def _grouped(mask: TensorLike, m: int, dim: int) -> torch.Tensor:
    """``[rows, groups, m]`` bool: groups of ``m`` consecutive entries along ``dim``, row = dim 0."""
    mask = _check_mask(mask)
    _mask_matrix(mask)  # at least 2 dims, not empty
    nd = mask.dim()
    if isinstance(dim, bool) or not isinstance(dim, int) or not -nd <= dim < nd or dim % nd == 0:
        raise ValueError(f"dim must pick one of dims 1..{nd - 1} of shape {tuple(mask.shape)} "
                         f"(dim 0 is the output rows), got {dim!r}")
    m = _check_int(m, "m", 2, 62)
    dim = dim % nd
    if mask.shape[dim] % m:
        raise ValueError(f"dim {dim} of mask shape {tuple(mask.shape)} has size {mask.shape[dim]}, "
                         f"not a multiple of m={m}")
    # Same layout as nm_groups: the grouped dim last, the other inner dims in order before it.
    return mask.movedim(dim, -1).reshape(mask.shape[0], -1, m)


def group_patterns(mask: TensorLike, m: int, *, dim: int = -1) -> GroupPatterns:
    """The kept pattern of every group of ``m`` consecutive entries of each row.

    Args:
        mask: bool tensor (True = kept), ``[out, in]`` or a conv mask ``[out, in, kh, kw]``.
        m: group size M (2..62).
        dim: the dim groups run along: -1 for a Linear mask or a grouped matrix view; 1 for the
            input channels of a conv mask (then, per row, the groups are ordered by kernel
            position, as in ``nm_groups``).

    Returns:
        A ``GroupPatterns`` with one code per (row, group).

    Raises:
        ValueError: a non-bool mask, fewer than 2 dims, a bad ``dim``, or a size that is not a
            multiple of ``m``.
    """
    groups = _grouped(mask, m, dim)
    weights = (1 << torch.arange(groups.shape[-1], device=groups.device, dtype=torch.int64))
    codes = (groups.to(torch.int64) * weights).sum(-1)
    return GroupPatterns(codes=codes.cpu().numpy(), m=int(groups.shape[-1]))


def pattern_histogram(mask: TensorLike, m: int, *, dim: int = -1) -> PatternHistogram:
    """How many groups of ``m`` kept each pattern of positions, over the whole mask.

    Args:
        mask: bool tensor (True = kept), as for ``group_patterns``.
        m: group size M (2..62).
        dim: as for ``group_patterns``.

    Returns:
        A ``PatternHistogram``. Every possible pattern with a kept count that occurs is listed
        (0 where unused) when there are at most ``MAX_LISTED_PATTERNS`` of them; otherwise only
        the patterns that occur.

    Raises:
        ValueError: as ``group_patterns``.
    """
    groups = _grouped(mask, m, dim)
    m = int(groups.shape[-1])
    weights = (1 << torch.arange(m, device=groups.device, dtype=torch.int64))
    codes, counts = torch.unique((groups.to(torch.int64) * weights).sum(-1), return_counts=True)
    seen = dict(zip(codes.cpu().tolist(), counts.cpu().tolist()))
    kept_counts = sorted({int(c).bit_count() for c in seen})
    complete = sum(math.comb(m, k) for k in kept_counts) <= MAX_LISTED_PATTERNS
    if complete:
        positions = [p for k in kept_counts for p in itertools.combinations(range(m), k)]
    else:
        positions = sorted((tuple(j for j in range(m) if c >> j & 1) for c in seen), key=lambda p: (len(p), p))
    codes_listed = [sum(1 << j for j in p) for p in positions]
    return PatternHistogram(
        patterns=[pattern_label(p, m) for p in positions],
        counts=np.array([seen.get(c, 0) for c in codes_listed], dtype=np.int64),
        n_kept=np.array([len(p) for p in positions], dtype=np.int64),
        m=m,
        groups=int(groups.shape[0] * groups.shape[1]),
        complete=complete,
    )
