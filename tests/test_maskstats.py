"""maskstats against plain-loop references on small odd shapes."""
import math

import numpy as np
import pytest
import torch

from sparsekit import maskstats as ms


def _rand_mask(rows, cols, p=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(rows, cols, generator=g) < p


def _rand_weight(*shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _loop_tiles(mask, tr, tc):
    """Kept fraction per tile with two Python loops over tiles and two over their cells."""
    rows, cols = mask.shape
    cells = mask.tolist()
    out = []
    for r0 in range(0, rows, tr):
        line = []
        for c0 in range(0, cols, tc):
            kept = total = 0
            for r in range(r0, min(r0 + tr, rows)):
                for c in range(c0, min(c0 + tc, cols)):
                    kept += cells[r][c]
                    total += 1
            line.append(kept / total)
        out.append(line)
    return np.array(out)


# ----------------------------------------------------------------------------- as_matrix


def test_as_matrix_flattens_conv_and_rejects_vectors():
    w = torch.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    m = ms.as_matrix(w)
    assert m.shape == (2, 12)
    assert m[1, 5].item() == w[1, 1, 0, 1].item()  # column = c*kh*kw + i*kw + j
    with pytest.raises(ValueError, match="2-D"):
        ms.as_matrix(torch.zeros(5))


# ----------------------------------------------------------------------------- density tiles


def test_density_tiles_auto_choice_matches_loop_on_odd_shape():
    mask = _rand_mask(37, 53, p=0.3)
    grid = ms.density_tiles(mask, max_cells=110)
    assert (grid.tile_rows, grid.tile_cols) == (4, 5)  # 10 x 11 = 110 tiles, the finest that fit
    assert grid.density.shape == (10, 11)
    np.testing.assert_allclose(grid.density, _loop_tiles(mask, 4, 5), rtol=0, atol=1e-12)
    assert list(grid.row_starts) == list(range(0, 37, 4))
    assert list(grid.col_starts) == list(range(0, 53, 5))


def test_density_tiles_forced_tile_matches_loop_and_preserves_count():
    mask = _rand_mask(37, 53, p=0.7, seed=3)
    grid = ms.density_tiles(mask, tile=(6, 7))
    np.testing.assert_allclose(grid.density, _loop_tiles(mask, 6, 7), atol=1e-12)
    kept_loop = sum(sum(row) for row in mask.tolist())
    assert grid.n_true == kept_loop
    assert round(float((grid.density * grid.cell_counts()).sum())) == kept_loop
    assert grid.cell_counts().sum() == 37 * 53


def test_density_tiles_one_by_one_when_it_fits():
    mask = _rand_mask(9, 11)
    grid = ms.density_tiles(mask, max_cells=99)
    assert (grid.tile_rows, grid.tile_cols) == (1, 1)
    np.testing.assert_array_equal(grid.density, np.array(mask.tolist(), dtype=float))


@pytest.mark.parametrize("shape,max_cells", [
    ((37, 53), 7), ((37, 53), 1), ((64, 64), 100), ((5, 3000), 500), ((3000, 5), 500),
    ((1000, 1000), 250_000), ((300, 7000), 50_000),
])
def test_density_tiles_never_exceeds_max_cells_and_counts_are_exact(shape, max_cells):
    mask = _rand_mask(*shape, p=0.4, seed=7)
    grid = ms.density_tiles(mask, max_cells)
    assert grid.density.size <= max_cells
    assert grid.n_true == int(mask.sum())
    assert math.isclose(float((grid.density * grid.cell_counts()).sum()), int(mask.sum()), abs_tol=1e-6)


def test_density_tiles_keeps_both_axes_of_a_skinny_matrix():
    mask = torch.zeros(4, 1_000_000, dtype=torch.bool)
    mask[1] = True
    grid = ms.density_tiles(mask)  # square tiles would collapse this into one tile row
    assert grid.density.shape[0] == 4
    assert grid.density.size <= 250_000
    np.testing.assert_array_equal(grid.density[:, 0], [0.0, 1.0, 0.0, 0.0])
    tall = ms.density_tiles(torch.ones(100_000, 100, dtype=torch.bool))
    assert tall.density.shape[1] >= 62 and tall.density.size <= 250_000


def test_density_tiles_square_ish_for_square_matrix():
    grid = ms.density_tiles(torch.ones(4096, 4096, dtype=torch.bool))
    assert grid.density.size <= 250_000
    assert max(grid.tile_rows, grid.tile_cols) <= 2 * min(grid.tile_rows, grid.tile_cols)
    assert np.all(grid.density == 1.0)


def test_density_tiles_conv_mask_is_tiled_as_matrix():
    mask = torch.rand(6, 4, 3, 3, generator=torch.Generator().manual_seed(5)) < 0.5
    grid = ms.density_tiles(mask, tile=(2, 5))
    np.testing.assert_allclose(grid.density, _loop_tiles(mask.reshape(6, 36), 2, 5), atol=1e-12)


def test_density_tiles_caps_cells_on_a_large_layer():
    # Speed is measured by benchmarks/bench_app.py, not asserted here.
    mask = torch.zeros(4096, 16384, dtype=torch.bool)
    mask[:, ::3] = True  # a pattern with a known count
    grid = ms.density_tiles(mask)
    assert grid.density.size <= 250_000
    assert grid.n_true == 4096 * len(range(0, 16384, 3))


def test_density_tiles_bad_inputs():
    with pytest.raises(ValueError, match="bool"):
        ms.density_tiles(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="2-D"):
        ms.density_tiles(torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_cells"):
        ms.density_tiles(torch.zeros(4, 4, dtype=torch.bool), max_cells=0)
    with pytest.raises(ValueError, match="empty"):
        ms.density_tiles(torch.zeros(0, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="over max_cells"):
        ms.density_tiles(torch.zeros(10, 10, dtype=torch.bool), max_cells=4, tile=(2, 2))


# ----------------------------------------------------------------------------- profiles


def test_row_and_col_density_match_loops():
    mask = _rand_mask(13, 17, p=0.35, seed=4)
    cells = mask.tolist()
    rows_ref = [sum(r) / 17 for r in cells]
    cols_ref = [sum(cells[r][c] for r in range(13)) / 13 for c in range(17)]
    np.testing.assert_allclose(ms.row_density(mask), rows_ref, atol=1e-12)
    np.testing.assert_allclose(ms.col_density(mask), cols_ref, atol=1e-12)
    with pytest.raises(ValueError, match="bool"):
        ms.row_density(mask.int())


# ----------------------------------------------------------------------------- N:M groups


def test_nm_groups_linear_matches_loop():
    w = _rand_weight(6, 16)
    mask = _rand_mask(6, 16, seed=8)
    groups = ms.nm_groups(w, mask, m=4, row=2, start_group=1, count=2)
    assert [g["group"] for g in groups] == [1, 2]
    for g in groups:
        cols = list(range(4 * g["group"], 4 * g["group"] + 4))
        assert g["columns"] == cols
        assert g["weight"] == pytest.approx([w[2, c].item() for c in cols])
        assert g["abs_weight"] == pytest.approx([abs(w[2, c].item()) for c in cols])
        assert g["kept"] == [bool(mask[2, c]) for c in cols]
        assert g["n_kept"] == sum(bool(mask[2, c]) for c in cols)


def test_nm_groups_clips_count_at_end_of_row():
    w = _rand_weight(2, 12)
    mask = _rand_mask(2, 12)
    groups = ms.nm_groups(w, mask, m=4, row=1, start_group=2, count=10)
    assert [g["group"] for g in groups] == [2]


def test_nm_groups_conv_runs_along_input_channels():
    out_c, in_c, kh, kw, m = 3, 8, 2, 2, 4
    w = _rand_weight(out_c, in_c, kh, kw)
    mask = torch.rand(out_c, in_c, kh, kw, generator=torch.Generator().manual_seed(9)) < 0.5
    groups = ms.nm_groups(w, mask, m=m, row=1, start_group=0, count=64)
    ref = []  # kernel position outer, channel blocks inner; columns in the as_matrix layout
    for i in range(kh):
        for j in range(kw):
            for c0 in range(0, in_c, m):
                chans = range(c0, c0 + m)
                ref.append(([c * kh * kw + i * kw + j for c in chans],
                            [w[1, c, i, j].item() for c in chans],
                            [bool(mask[1, c, i, j]) for c in chans]))
    assert len(groups) == len(ref) == 8
    for g, (cols, vals, kept) in zip(groups, ref):
        assert g["columns"] == cols
        assert g["weight"] == pytest.approx(vals)
        assert g["kept"] == kept
        flat_w = ms.as_matrix(w)
        assert g["weight"] == pytest.approx([flat_w[1, c].item() for c in cols])


def test_nm_groups_bad_inputs():
    w = _rand_weight(4, 10)
    mask = _rand_mask(4, 10)
    with pytest.raises(ValueError, match="not a multiple of m=4"):
        ms.nm_groups(w, mask, m=4, row=0)
    with pytest.raises(ValueError, match="row"):
        ms.nm_groups(w, mask, m=5, row=4)
    with pytest.raises(ValueError, match="start_group"):
        ms.nm_groups(w, mask, m=5, row=0, start_group=2)
    with pytest.raises(ValueError, match="count"):
        ms.nm_groups(w, mask, m=5, row=0, count=65)
    with pytest.raises(ValueError, match="m must be"):
        ms.nm_groups(w, mask, m=1, row=0)
    with pytest.raises(ValueError, match=r"shapes differ: weight \(4, 10\) vs mask \(4, 5\)"):
        ms.nm_groups(w, mask[:, :5], m=5, row=0)


# ----------------------------------------------------------------------------- magnitudes


def test_magnitude_split_exact_when_small():
    w = _rand_weight(7, 9)
    mask = _rand_mask(7, 9, seed=11)
    split = ms.magnitude_split(w, mask)
    kept_ref, pruned_ref = [], []
    for r in range(7):
        for c in range(9):
            (kept_ref if mask[r, c] else pruned_ref).append(abs(w[r, c].item()))
    np.testing.assert_allclose(split.kept_abs, kept_ref, rtol=1e-6)
    np.testing.assert_allclose(split.pruned_abs, pruned_ref, rtol=1e-6)
    assert (split.n_kept, split.n_pruned) == (len(kept_ref), len(pruned_ref))


def test_magnitude_split_subsamples_with_exact_counts():
    w = _rand_weight(300, 400)
    mask = w.abs() > 0.5
    split = ms.magnitude_split(w, mask, max_points=5000, seed=3)
    assert len(split.kept_abs) + len(split.pruned_abs) == 5000
    assert split.n_kept == int((w.abs() > 0.5).sum()) and split.n_kept + split.n_pruned == 120_000
    # Sampled values really are kept/pruned magnitudes of this layer.
    assert np.all(split.kept_abs > 0.5) and np.all(split.pruned_abs <= 0.5)
    share = len(split.kept_abs) / 5000
    assert abs(share - split.n_kept / 120_000) < 0.03
    again = ms.magnitude_split(w, mask, max_points=5000, seed=3)
    np.testing.assert_array_equal(split.kept_abs, again.kept_abs)
    with pytest.raises(ValueError, match="max_points"):
        ms.magnitude_split(w, mask, max_points=0)


def test_magnitude_histograms_match_numpy_on_the_same_edges():
    w = _rand_weight(50, 70)
    mask = _rand_mask(50, 70, seed=12)
    hist = ms.magnitude_histograms(w, mask, bins=17)
    assert hist.edges.shape == (18,) and hist.edges[0] == 0
    assert hist.edges[-1] == pytest.approx(w.abs().max().item())
    values = np.abs(w.numpy()).astype(np.float64)
    keep = mask.numpy()
    np.testing.assert_array_equal(hist.kept, np.histogram(values[keep], bins=hist.edges)[0])
    np.testing.assert_array_equal(hist.pruned, np.histogram(values[~keep], bins=hist.edges)[0])
    assert hist.kept.sum() + hist.pruned.sum() == 3500


def test_magnitude_histograms_bad_inputs():
    w = _rand_weight(4, 4)
    mask = _rand_mask(4, 4)
    with pytest.raises(ValueError, match="bins"):
        ms.magnitude_histograms(w, mask, bins=0)
    w[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ms.magnitude_histograms(w, mask)


# ----------------------------------------------------------------------------- diffs


def test_mask_diff_counts_match_loops():
    a = _rand_mask(11, 19, seed=20)
    b = _rand_mask(11, 19, seed=21)
    counts = {"both_kept": 0, "only_a": 0, "only_b": 0, "both_pruned": 0}
    sad = 0
    for x, y in zip(a.flatten().tolist(), b.flatten().tolist()):
        key = ("both_kept" if y else "only_a") if x else ("only_b" if y else "both_pruned")
        counts[key] += 1
        sad += x != y
    d = ms.mask_diff(a, b)
    assert (d.both_kept, d.only_a, d.only_b, d.both_pruned) == tuple(counts.values())
    assert d.sad == sad and d.numel == 11 * 19
    assert d.fraction == pytest.approx(sad / (11 * 19))


def test_diff_tiles_match_loop():
    a = _rand_mask(23, 31, seed=22)
    b = _rand_mask(23, 31, seed=23)
    xor = torch.tensor([[x != y for x, y in zip(ra, rb)] for ra, rb in zip(a.tolist(), b.tolist())])
    grid = ms.diff_tiles(a, b, max_cells=40)
    assert grid.density.size <= 40
    np.testing.assert_allclose(grid.density, _loop_tiles(xor, grid.tile_rows, grid.tile_cols), atol=1e-12)
    assert grid.n_true == ms.mask_diff(a, b).sad


def test_mask_diff_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        ms.mask_diff(torch.ones(3, 4, dtype=torch.bool), torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        ms.diff_tiles(torch.ones(3, 4, dtype=torch.bool), torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        ms.mask_diff(torch.ones(3, 4), torch.ones(3, 4, dtype=torch.bool))


# ----------------------------------------------------------------------------- zoom


def test_zoom_exact_block():
    w = _rand_weight(20, 30)
    mask = _rand_mask(20, 30, seed=30)
    z = ms.zoom(w, mask, 3, 7, rows=4, cols=5)
    assert z.weight.shape == (4, 5)
    for i in range(4):
        for j in range(5):
            assert z.weight[i, j] == pytest.approx(w[3 + i, 7 + j].item())
            assert z.kept[i, j] == bool(mask[3 + i, 7 + j])
    assert list(z.row_index) == [3, 4, 5, 6] and list(z.col_index) == [7, 8, 9, 10, 11]


def test_zoom_clips_at_edges():
    w = _rand_weight(20, 30)
    mask = _rand_mask(20, 30)
    z = ms.zoom(w, mask, 18, 25, rows=10, cols=10)
    assert z.weight.shape == (2, 5)
    assert z.weight[1, 4] == pytest.approx(w[19, 29].item())
    assert list(z.col_index) == [25, 26, 27, 28, 29]


def test_zoom_does_not_alias_the_weight():
    w = _rand_weight(8, 8).double()
    z = ms.zoom(w, torch.ones(8, 8, dtype=torch.bool), 0, 0, 4, 4)
    z.weight[0, 0] = 123.0
    assert w[0, 0].item() != 123.0


def test_zoom_bad_inputs():
    w = _rand_weight(20, 30)
    mask = _rand_mask(20, 30)
    with pytest.raises(ValueError, match="20x30"):
        ms.zoom(w, mask, 20, 0)
    with pytest.raises(ValueError, match="20x30"):
        ms.zoom(w, mask, 0, -1)
    with pytest.raises(ValueError, match="rows"):
        ms.zoom(w, mask, 0, 0, rows=65)
    with pytest.raises(ValueError, match="cols"):
        ms.zoom(w, mask, 0, 0, cols=0)
    with pytest.raises(ValueError, match="shapes differ"):
        ms.zoom(w, mask.T, 0, 0)
    with pytest.raises(ValueError, match="bool"):
        ms.zoom(w, mask.float(), 0, 0)
