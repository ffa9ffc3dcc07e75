"""Layout of the mask figures: theme-neutral backgrounds, N:M group lines, labels that fit, panel gaps."""
from collections import Counter

import numpy as np
import pytest
import torch

import sparsekit
from sparsekit import viz
from sparsekit.viz import masks as vm

WHITE = {"white", "#fff", "#ffffff", "rgb(255,255,255)", "rgba(255,255,255,1)"}
PLOTLY_DEFAULT_HEIGHT, PLOTLY_DEFAULT_MARGIN_T, PLOTLY_DEFAULT_MARGIN_B = 450, 100, 80


def _weight(rows, cols, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def every_mask_figure():
    w = _weight(24, 32)
    mask = sparsekit.nm_mask(w, 2, 4)
    big = torch.rand(600, 600, generator=torch.Generator().manual_seed(1)) > 0.5
    return {
        "heatmap": viz.mask_heatmap(mask),
        "zoom": viz.mask_zoom_figure(w, mask, 0, 0, 8, 8),
        "zoom with groups": viz.mask_zoom_figure(w, mask, 0, 0, 8, 8, m=4),
        "groups": viz.nm_group_figure(w, mask, 4, 0),
        "histogram": viz.magnitude_histogram(w, mask),
        "profile": viz.density_profile(mask),
        "diff": viz.mask_diff_figure(mask, ~mask),
        "diff tiled": viz.mask_diff_figure(big, ~big, max_cells=1000),
        "patterns": vm.nm_pattern_figure(mask, 4),
    }


def test_no_mask_figure_sets_a_white_background():
    # A hard-coded white background stays white under the app's dark theme.
    for name, fig in every_mask_figure().items():
        for attr in ("paper_bgcolor", "plot_bgcolor"):
            value = getattr(fig.layout, attr)
            assert value is None or str(value).replace(" ", "").lower() not in WHITE, (name, attr, value)


def test_zoom_draws_a_line_before_every_group_start():
    w = _weight(10, 30)
    mask = torch.ones(10, 30, dtype=torch.bool)
    fig = viz.mask_zoom_figure(w, mask, 2, 3, rows=5, cols=10, m=4)  # columns 3..12, rows 2..6
    want = [c - 0.5 for c in range(4, 13) if c % 4 == 0]  # columns 4, 8, 12 start a group
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert sorted(s.x0 for s in lines) == want == [3.5, 7.5, 11.5]
    assert all(s.x0 == s.x1 and s.y0 == 1.5 and s.y1 == 6.5 for s in lines)  # vertical, across the block
    assert "every 4 columns" in fig.layout.title.text
    assert not viz.mask_zoom_figure(w, mask, 2, 3, rows=5, cols=10).layout.shapes
    with pytest.raises(ValueError, match="m must be"):
        viz.mask_zoom_figure(w, mask, 0, 0, m=1)


def test_nm_group_inspector_lines_stay_behind_bars_and_labels_are_short():
    w = _weight(4, 64)
    mask = sparsekit.nm_mask(w, 2, 4)
    fig = viz.nm_group_figure(w, mask, 4, row=1, start_group=5, count=8)
    shapes = list(fig.layout.shapes)
    assert len(shapes) == 7 and all(s.layer == "below" for s in shapes)
    assert [s.x0 for s in shapes] == [k * 4 - 0.5 for k in range(1, 8)]  # in the gaps between groups
    notes = list(fig.layout.annotations)
    assert [a.x for a in notes] == [k * 4 + 1.5 for k in range(8)]  # centred over each group
    for k, a in enumerate(notes):
        lines = a.text.split("<br>")
        assert lines == [f"g{5 + k}", "2/4"]
        assert max(len(s) for s in lines) <= 4  # fits over four bars even in a half-width column
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0
    assert fig.layout.margin.t >= 100  # title and the two label lines above the plot


def test_density_profile_keeps_the_lower_title_clear_of_the_upper_axis_title():
    fig = viz.density_profile(torch.rand(40, 64, generator=torch.Generator().manual_seed(2)) > 0.5)
    height = fig.layout.height or PLOTLY_DEFAULT_HEIGHT
    top = fig.layout.margin.t if fig.layout.margin.t is not None else PLOTLY_DEFAULT_MARGIN_T
    bottom = fig.layout.margin.b if fig.layout.margin.b is not None else PLOTLY_DEFAULT_MARGIN_B
    plot_px = height - top - bottom
    upper, lower = fig.layout.yaxis.domain, fig.layout.yaxis2.domain
    gap_px = (upper[0] - lower[1]) * plot_px
    # Below the upper panel: tick labels (~20 px) and its axis title (~25 px); above the lower
    # panel: its subplot title (~25 px).
    assert gap_px >= 90, gap_px
    lower_title = next(a for a in fig.layout.annotations if a.text.startswith("kept fraction per column"))
    assert lower_title.y == pytest.approx(lower[1]) and lower_title.yanchor == "bottom"


def test_pattern_figure_counts_match_a_loop():
    w = _weight(16, 32, seed=3)
    mask = sparsekit.nm_mask(w, 2, 4)
    fig = vm.nm_pattern_figure(mask, 4)
    rows = mask.tolist()
    counts = Counter("".join("1" if row[s + j] else "0" for j in range(4)) for row in rows for s in range(0, 32, 4))
    assert dict(zip(fig.data[0].x, np.asarray(fig.data[0].y).tolist())) == {
        p: counts.get(p, 0) for p in ("1100", "1010", "1001", "0110", "0101", "0011")}
    assert fig.layout.shapes[0].y0 == pytest.approx(16 * 8 / 6)  # every pattern equally used


def test_mask_heatmap_keeps_cells_square():
    import torch

    from sparsekit import viz

    for shape in ((384, 384), (64, 256)):
        fig = viz.mask_heatmap(torch.rand(shape) > 0.5).to_dict()["layout"]
        assert fig["yaxis"]["scaleanchor"] == "x" and fig["yaxis"]["scaleratio"] == 1
        assert fig["yaxis"]["autorange"] == "reversed"  # row 0 stays at the top
