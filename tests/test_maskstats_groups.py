"""Kept-position patterns of N:M groups, checked against plain Python loops over the groups."""
import math
from collections import Counter

import numpy as np
import pytest
import torch

import sparsekit
from sparsekit.maskstats import group_patterns, pattern_histogram, pattern_label


def loop_patterns(mask_2d, m):
    """Per (row, group): the tuple of kept positions, from nested loops over a list of lists."""
    rows = mask_2d.tolist()
    out = []
    for row in rows:
        out.append([tuple(j for j in range(m) if row[s + j]) for s in range(0, len(row), m)])
    return out


def test_codes_match_loop_over_groups():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(7, 24, generator=gen) > 0.5
    got = group_patterns(mask, 4)
    ref = loop_patterns(mask, 4)
    assert got.codes.shape == (7, 6)
    for i in range(7):
        for g in range(6):
            assert got.codes[i, g] == sum(2**j for j in ref[i][g])
            assert got.n_kept[i, g] == len(ref[i][g])


def test_2_4_histogram_lists_all_six_patterns_in_combination_order():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(32, 64, generator=gen)
    mask = sparsekit.nm_mask(w, 2, 4)
    hist = pattern_histogram(mask, 4)
    assert hist.patterns == ["1100", "1010", "1001", "0110", "0101", "0011"]
    counts = Counter(p for row in loop_patterns(mask, 4) for p in row)
    assert list(hist.counts) == [counts[p] for p in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]]
    assert hist.groups == 32 * 16 == hist.counts.sum()
    assert list(hist.n_kept) == [2] * 6 and hist.complete


def test_unused_patterns_are_listed_with_zero():
    # Every group keeps its first two entries: one pattern used, five listed at 0.
    mask = torch.tensor([[True, True, False, False] * 3] * 2)
    hist = pattern_histogram(mask, 4)
    assert dict(zip(hist.patterns, hist.counts.tolist())) == {
        "1100": 6, "1010": 0, "1001": 0, "0110": 0, "0101": 0, "0011": 0}


def test_mixed_kept_counts_random_mask():
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(9, 40, generator=gen) > 0.6
    hist = pattern_histogram(mask, 8)
    counts = Counter(p for row in loop_patterns(mask, 8) for p in row)
    kept_counts = sorted({len(p) for p in counts})
    assert hist.complete == (sum(math.comb(8, k) for k in kept_counts) <= 256)
    listed = dict(zip(hist.patterns, hist.counts.tolist()))
    for p, c in counts.items():
        assert listed[pattern_label(p, 8)] == c
    assert sum(listed.values()) == 9 * 5
    assert set(hist.n_kept.tolist()) == set(kept_counts)


def test_too_many_possible_patterns_lists_only_used_ones():
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(4, 64, generator=gen) > 0.5  # M=32: C(32, k) is far above the listing cap
    hist = pattern_histogram(mask, 32)
    assert not hist.complete
    counts = Counter(pattern_label(p, 32) for row in loop_patterns(mask, 32) for p in row)
    assert dict(zip(hist.patterns, hist.counts.tolist())) == dict(counts)


def test_conv_mask_groups_run_along_input_channels():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(3, 8, 2, 2, generator=gen)
    mask = sparsekit.nm_mask(w, 2, 4, dim=1)
    got = group_patterns(mask, 4, dim=1)
    # Loop: for each row and kernel position, the 8 input channels make two groups of 4.
    assert got.codes.shape == (3, 8)
    for o in range(3):
        g = 0
        for kh in range(2):
            for kw in range(2):
                for s in (0, 4):
                    kept = [j for j in range(4) if mask[o, s + j, kh, kw]]
                    assert got.codes[o, g] == sum(2**j for j in kept)
                    g += 1
    assert (got.n_kept == 2).all()


def test_bad_input():
    with pytest.raises(ValueError, match="bool"):
        group_patterns(torch.zeros(2, 8), 4)
    with pytest.raises(ValueError, match="not a multiple of m=4"):
        pattern_histogram(torch.zeros(2, 10, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="2-D"):
        group_patterns(torch.zeros(8, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="dim"):
        group_patterns(torch.zeros(2, 8, dtype=torch.bool), 4, dim=0)
    with pytest.raises(ValueError, match="m must be"):
        group_patterns(torch.zeros(2, 8, dtype=torch.bool), 1)
    assert np.array_equal(group_patterns(np.ones((2, 4), dtype=bool), 2).codes, [[3, 3], [3, 3]])
