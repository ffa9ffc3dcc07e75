"""Figure builders: the data each figure carries matches plain-loop reference numbers."""
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from sparsekit import viz
from sparsekit.sparsify import LayerReport


def _rand_mask(rows, cols, p=0.5, seed=0):
    return torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed)) < p


def _rand_weight(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _loop_tiles(cells, tr, tc):
    rows, cols = len(cells), len(cells[0])
    out = []
    for r0 in range(0, rows, tr):
        line = []
        for c0 in range(0, cols, tc):
            block = [cells[r][c] for r in range(r0, min(r0 + tr, rows)) for c in range(c0, min(c0 + tc, cols))]
            line.append(sum(block) / len(block))
        out.append(line)
    return np.array(out)


def _arr(x):
    return np.asarray(x, dtype=float)


# ----------------------------------------------------------------------------- mask heatmap


def test_mask_heatmap_small_mask_shows_every_cell():
    mask = _rand_mask(9, 13, seed=2)
    fig = viz.mask_heatmap(mask)
    assert isinstance(fig, go.Figure)
    np.testing.assert_array_equal(_arr(fig.data[0].z), np.array(mask.tolist(), dtype=float))
    assert list(fig.data[0].x) == list(range(13)) and list(fig.data[0].y) == list(range(9))
    assert "per weight" in fig.layout.title.text
    assert fig.data[0].colorbar.title.text == "kept fraction"
    assert (fig.data[0].zmin, fig.data[0].zmax) == (0, 1)
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_mask_heatmap_tiles_match_loop():
    mask = _rand_mask(37, 53, p=0.3, seed=3)
    fig = viz.mask_heatmap(mask, max_cells=110, title="custom")
    np.testing.assert_allclose(_arr(fig.data[0].z), _loop_tiles(mask.tolist(), 4, 5), atol=1e-6)
    assert list(fig.data[0].x) == list(range(0, 53, 5))  # tile starts: real column indices
    assert list(fig.data[0].y) == list(range(0, 37, 4))
    assert fig.layout.title.text == "custom"
    assert "4×5 tile" in viz.mask_heatmap(mask, max_cells=110).layout.title.text


def test_mask_heatmap_large_mask_is_capped():
    mask = torch.zeros(4096, 4096, dtype=torch.bool)
    mask[:, ::2] = True
    mask[:100] = False
    fig = viz.mask_heatmap(mask)
    z = _arr(fig.data[0].z)
    assert z.size <= 250_000
    # Kept count is preserved through the tiles (reference: count by construction).
    tr = int(fig.data[0].y[1] - fig.data[0].y[0])
    tc = int(fig.data[0].x[1] - fig.data[0].x[0])
    rows = np.minimum(tr, 4096 - np.asarray(fig.data[0].y))
    cols = np.minimum(tc, 4096 - np.asarray(fig.data[0].x))
    assert math.isclose(float((z * np.outer(rows, cols)).sum()), (4096 - 100) * 2048, rel_tol=1e-6)


def test_mask_heatmap_bad_input():
    with pytest.raises(ValueError, match="bool"):
        viz.mask_heatmap(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="max_cells"):
        viz.mask_heatmap(torch.zeros(3, 3, dtype=torch.bool), max_cells=0)


# ----------------------------------------------------------------------------- zoom


def test_mask_zoom_figure_cells_and_text():
    w = _rand_weight(10, 12)
    mask = _rand_mask(10, 12, seed=4)
    fig = viz.mask_zoom_figure(w, mask, 6, 8, rows=8, cols=8)  # clipped to 4 x 4
    kept_z, pruned_z = _arr(fig.data[0].z), _arr(fig.data[1].z)
    assert kept_z.shape == (4, 4)
    for i in range(4):
        for j in range(4):
            value = w[6 + i, 8 + j].item()
            if mask[6 + i, 8 + j]:
                assert kept_z[i, j] == pytest.approx(value)
                assert math.isnan(pruned_z[i, j])
                assert fig.data[0].text[i][j] == f"{value:.3g}"
            else:
                assert math.isnan(kept_z[i, j])
                assert not math.isnan(pruned_z[i, j])
                assert fig.data[1].text[i][j] == f"{value:.3g}"
    assert list(fig.data[0].x) == [8, 9, 10, 11] and list(fig.data[0].y) == [6, 7, 8, 9]
    assert fig.data[0].zmid == 0
    assert fig.data[0].texttemplate == "%{text}"
    assert "rows 6–9, columns 8–11" in fig.layout.title.text


def test_mask_zoom_figure_large_block_has_no_cell_text():
    w = _rand_weight(64, 64)
    fig = viz.mask_zoom_figure(w, torch.ones(64, 64, dtype=torch.bool), 0, 0, 40, 40)
    assert fig.data[0].texttemplate is None
    with pytest.raises(ValueError, match="64x64"):
        viz.mask_zoom_figure(w, torch.ones(64, 64, dtype=torch.bool), 64, 0)


# ----------------------------------------------------------------------------- N:M groups


def test_nm_group_figure_bars_match_loop():
    w = _rand_weight(4, 16)
    mask = _rand_mask(4, 16, seed=5)
    fig = viz.nm_group_figure(w, mask, m=4, row=3, start_group=1, count=3)
    cols = range(4, 16)
    kept_ref = [(str(c), abs(w[3, c].item())) for c in cols if mask[3, c]]
    pruned_ref = [(str(c), abs(w[3, c].item())) for c in cols if not mask[3, c]]
    assert list(fig.data[0].x) == [c for c, _ in kept_ref]
    assert list(fig.data[0].y) == pytest.approx([v for _, v in kept_ref])
    assert list(fig.data[1].x) == [c for c, _ in pruned_ref]
    assert list(fig.data[1].y) == pytest.approx([v for _, v in pruned_ref])
    assert list(fig.layout.xaxis.categoryarray) == [str(c) for c in cols]
    assert len(fig.layout.shapes) == 2  # boundaries between the three groups
    assert fig.layout.yaxis.title.text == "|weight|"


def test_nm_group_figure_bad_input():
    with pytest.raises(ValueError, match="multiple"):
        viz.nm_group_figure(_rand_weight(2, 10), _rand_mask(2, 10), m=4, row=0)


# ----------------------------------------------------------------------------- magnitudes


def test_magnitude_histogram_counts_match_numpy_reference():
    w = _rand_weight(40, 60)
    mask = w.abs() > 0.3
    fig = viz.magnitude_histogram(w, mask, bins=20)
    values = [abs(v) for v in w.flatten().tolist()]
    keep = mask.flatten().tolist()
    top = max(values)
    edges = np.linspace(0, top, 21)
    kept_ref = np.histogram([v for v, k in zip(values, keep) if k], bins=edges)[0]
    pruned_ref = np.histogram([v for v, k in zip(values, keep) if not k], bins=edges)[0]
    np.testing.assert_array_equal(_arr(fig.data[0].y), kept_ref)
    np.testing.assert_array_equal(_arr(fig.data[1].y), pruned_ref)
    np.testing.assert_allclose(_arr(fig.data[0].x), (edges[:-1] + edges[1:]) / 2, rtol=1e-5)
    n_kept = sum(keep)
    assert fig.data[0].name == f"kept ({n_kept:,})"
    assert fig.data[1].name == f"pruned ({2400 - n_kept:,})"
    assert fig.layout.barmode == "overlay"


# ----------------------------------------------------------------------------- profiles


def test_density_profile_matches_loops():
    mask = _rand_mask(11, 23, p=0.4, seed=6)
    cells = mask.tolist()
    fig = viz.density_profile(mask)
    rows_ref = [sum(r) / 23 for r in cells]
    cols_ref = [sum(cells[r][c] for r in range(11)) / 11 for c in range(23)]
    np.testing.assert_allclose(_arr(fig.data[0].y), rows_ref, atol=1e-6)
    np.testing.assert_allclose(_arr(fig.data[1].y), cols_ref, atol=1e-6)
    titles = [a.text for a in fig.layout.annotations]
    assert "kept fraction per row (output unit)" in titles
    assert "kept fraction per column (input feature)" in titles


# ----------------------------------------------------------------------------- diffs


def test_mask_diff_figure_small_is_categorical():
    a = _rand_mask(7, 9, seed=7)
    b = _rand_mask(7, 9, seed=8)
    fig = viz.mask_diff_figure(a, b, labels=("step 0", "step 100"))
    z = _arr(fig.data[0].z)
    sad = 0
    for r in range(7):
        for c in range(9):
            x, y = bool(a[r, c]), bool(b[r, c])
            expected = {(False, False): 0, (True, False): 1, (False, True): 2, (True, True): 3}[(x, y)]
            assert z[r, c] == expected
            sad += x != y
    title = fig.layout.title.text
    assert f"SAD = {sad:,} of 63" in title
    assert f"{100 * sad / 63:.3g}%" in title
    assert "only step 0 kept" in list(fig.data[0].colorbar.ticktext)


def test_mask_diff_figure_large_is_tiled():
    a = _rand_mask(40, 50, seed=9)
    b = _rand_mask(40, 50, seed=10)
    fig = viz.mask_diff_figure(a, b, max_cells=100)
    z = _arr(fig.data[0].z)
    assert z.size <= 100
    tr = int(fig.data[0].y[1] - fig.data[0].y[0])
    tc = int(fig.data[0].x[1] - fig.data[0].x[0])
    xor = [[x != y for x, y in zip(ra, rb)] for ra, rb in zip(a.tolist(), b.tolist())]
    np.testing.assert_allclose(z, _loop_tiles(xor, tr, tc), atol=1e-6)
    sad = sum(map(sum, xor))
    assert f"SAD = {sad:,} of 2,000" in fig.layout.title.text
    assert "differ" in fig.layout.title.text


def test_mask_diff_figure_bad_input():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 4\)"):
        viz.mask_diff_figure(torch.ones(3, 4, dtype=torch.bool), torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels"):
        viz.mask_diff_figure(torch.ones(3, 4, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool),
                             labels=("only one",))


# ----------------------------------------------------------------------------- reports


def _layer(name, kept, numel, skipped_reason="", **sizes):
    return LayerReport(name=name, layer_type="Linear", group="", shape=(numel,), numel=numel, kept=kept,
                       skipped_reason=skipped_reason, **sizes)


def test_layer_kept_figure_splits_skipped_layers():
    report = [
        _layer("enc.0.q", 2, 4),
        _layer("enc.0.k", 1, 4, skipped_reason=""),
        _layer("head", 4, 4, skipped_reason="output layer"),
    ]
    fig = viz.layer_kept_figure(report)
    assert list(fig.data[0].y) == ["enc.0.q", "enc.0.k"] and list(fig.data[0].x) == [0.5, 0.25]
    assert list(fig.data[1].y) == ["head"] and list(fig.data[1].x) == [1.0]
    assert list(fig.data[1].customdata) == ["output layer"]
    assert fig.data[0].marker.color != fig.data[1].marker.color
    assert list(fig.layout.yaxis.categoryarray) == ["enc.0.q", "enc.0.k", "head"]
    with pytest.raises(ValueError, match="LayerReport"):
        viz.layer_kept_figure([{"name": "x", "kept_fraction": 0.5}])
    with pytest.raises(ValueError, match="between 0 and numel"):
        _layer("x", 6, 4)
    assert isinstance(viz.layer_kept_figure([]), go.Figure)


def test_params_by_type_figure_sorted_counts():
    fig = viz.params_by_type_figure({"LayerNorm": 1_536, "Linear": 21_000_000, "Embedding": 11_000_000})
    assert list(fig.data[0].x) == ["Linear", "Embedding", "LayerNorm"]
    assert list(fig.data[0].y) == [21_000_000, 11_000_000, 1_536]
    assert "32,001,536" in fig.layout.title.text
    with pytest.raises(ValueError, match="non-negative"):
        viz.params_by_type_figure({"Linear": -1})


def test_quality_figure_grouped_bars():
    dense = {"acc": 0.92, "loss": 0.31}
    sparse = {"loss": 0.40, "acc": 0.88}
    fig = viz.quality_figure(dense, sparse, labels={"acc": "accuracy"})
    assert list(fig.data[0].x) == ["accuracy", "loss"]
    assert list(fig.data[0].y) == [0.92, 0.31]
    assert list(fig.data[1].y) == [0.88, 0.40]
    assert fig.layout.barmode == "group"
    assert fig.data[1].customdata[0] == f"{100 * (0.88 - 0.92) / 0.92:.3g}%"
    with pytest.raises(ValueError, match="only in sparse"):
        viz.quality_figure({"acc": 1.0}, {"acc": 1.0, "f1": 0.5})


def test_memory_figure_megabytes_per_format():
    report = [
        _layer("q", 1, 2, dense_bytes=2**21, bitmask_bytes=2**20 + 2**16, csr_bytes=3 * 2**19, nm_bytes=2**20),
        _layer("conv", 1, 2, dense_bytes=2**20, bitmask_bytes=2**19, csr_bytes=2**19, nm_bytes=None),
    ]
    fig = viz.memory_figure(report, per_layer=True)
    by_name = {t.name: list(t.y) for t in fig.data}
    assert by_name["dense"] == [2.0, 1.0]
    assert by_name["bitmask"] == [1.0625, 0.5]
    assert by_name["CSR"] == [1.5, 0.5]
    assert by_name["N:M"] == [1.0, None]
    assert fig.layout.yaxis.title.text == "weight memory (MB)"
    no_nm = viz.memory_figure(report[1:], per_layer=True)
    assert [t.name for t in no_nm.data] == ["dense", "bitmask", "CSR"]
    with pytest.raises(ValueError, match="LayerReport"):
        viz.memory_figure([{"name": "q", "dense_bytes": 1, "bitmask_bytes": 1}])
    with pytest.raises(ValueError, match="csr_bytes"):
        _layer("q", 1, 2, dense_bytes=1, bitmask_bytes=1, csr_bytes=-1)


def test_memory_figure_totals_pruned_layers():
    sizes = [dict(dense_bytes=2**21, bitmask_bytes=2**19, csr_bytes=2**20, nm_bytes=2**20),
             dict(dense_bytes=2**20, bitmask_bytes=2**18, csr_bytes=2**19, nm_bytes=2**19),
             dict(dense_bytes=2**22, bitmask_bytes=2**22, csr_bytes=2**23, nm_bytes=None)]
    report = [_layer("a", 1, 2, **sizes[0]), _layer("b", 1, 2, **sizes[1]),
              _layer("head", 2, 2, skipped_reason="output layer", **sizes[2])]
    fig = viz.memory_figure(report)
    by_name = {t.name: list(t.y) for t in fig.data}
    assert list(fig.data[0].x) == ["all 2 pruned layers"]
    for label, key in (("dense", "dense_bytes"), ("bitmask", "bitmask_bytes"), ("CSR", "csr_bytes"),
                       ("N:M", "nm_bytes")):
        assert by_name[label] == [(sizes[0][key] + sizes[1][key]) / 2**20]
    # One pruned layer without an N:M size: no N:M total at all.
    report[1] = _layer("b", 1, 2, **{**sizes[1], "nm_bytes": None})
    assert [t.name for t in viz.memory_figure(report).data] == ["dense", "bitmask", "CSR"]
    assert "no pruned layers" in viz.memory_figure(report[2:]).layout.annotations[0].text


def test_figures_serialise_to_json():
    w = _rand_weight(8, 8)
    mask = w.abs() > 0.5
    for fig in (viz.mask_heatmap(mask), viz.mask_zoom_figure(w, mask, 0, 0, 8, 8),
                viz.nm_group_figure(w, mask, 4, 0), viz.magnitude_histogram(w, mask),
                viz.density_profile(mask), viz.mask_diff_figure(mask, ~mask)):
        assert fig.to_json()


def test_bench_figures_one_per_suite_from_case_results():
    from sparsekit.bench import CaseResult

    def case(suite, backend, speedup, **params):
        return CaseResult(suite=suite, case=f"{suite} {backend}", backend=backend, device="cpu", dtype="float32",
                          params=params, speedup=speedup)

    results = [case("formats", "CSR", 4.0, density=0.01), case("formats", "CSR", 0.9, density=0.1),
               case("formats", "dense", None, density=1.0),
               case("attention", "flex", 2.5, pattern="window", seq_len=2048, block_density=0.125),
               case("linear", "2:4", None, out_features=8, in_features=8, batch=1)]
    figs = viz.bench_figures(results)
    assert list(figs) == ["formats", "attention", "linear"]
    csr = next(t for t in figs["formats"].data if t.name == "CSR")
    assert list(csr.x) == [0.01, 0.1] and list(csr.y) == [4.0, 0.9]
    measured = next(t for t in figs["attention"].data if t.name == "window (measured)")
    assert list(measured.x) == [2048] and list(measured.y) == [2.5]
    # Linear cases that were all refused still get their figure, which says why.
    assert "no timed" in figs["linear"].layout.annotations[0].text
    assert list(viz.bench_figures(results[:2])) == ["formats"]
