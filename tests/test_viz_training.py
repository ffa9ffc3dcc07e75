"""Figures of the Training page: one colour per run across figures, readable log ticks, the flip-count
colour scale, and flip maps of two runs on one shared scale."""
import colorsys
import itertools

import numpy as np
import pytest

from sparsekit.topology import SadReport
from sparsekit.training import EpochMetrics, RunRecord, TrainConfig
from sparsekit.viz.training import (flip_count_figure, flip_maps_figure, run_colors, sad_series_figure,
                                    training_curves_figure)


def record(run_id: str, losses, method="ste") -> RunRecord:
    epochs = [EpochMetrics(epoch=i + 1, step=10 * (i + 1), train_loss=loss * 1.1, train_accuracy=50.0,
                           test_loss=loss, test_accuracy=60.0 + i, lr=0.1, density=0.5, seconds=1.0)
              for i, loss in enumerate(losses)]
    return RunRecord(config=TrainConfig(method=method), name=f"run {run_id}", run_id=run_id, epochs=epochs)


def report(interval) -> SadReport:
    n = len(interval)
    zeros = np.zeros(n, dtype=np.int64)
    return SadReport(layers=["fc"], numel={"fc": 1000}, steps=list(range(n)), epochs=[float(i) for i in range(n)],
                     interval={"fc": np.array(interval, dtype=np.int64)}, from_first={"fc": zeros},
                     to_final={"fc": zeros})


def hue(color: str) -> float:
    r, g, b = (int(color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return colorsys.rgb_to_hls(r, g, b)[0] * 360


def luminance(color: str) -> float:
    # WCAG relative luminance.
    def lin(c):
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (lin(int(color[i:i + 2], 16) / 255) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_a_run_keeps_its_colour_in_every_figure():
    runs = [record("a", [2.0, 1.0]), record("b", [1.5, 0.5]), record("c", [1.2, 0.3], method="srste")]
    reports = [report([0, 30, 10]), report([0, 20, 5]), report([0, 12, 2])]
    colors = run_colors(runs)
    curves = training_curves_figure(runs, colors=colors)
    # The page draws SAD only for runs with snapshots: a subset, which must not shift the colours.
    figs = [sad_series_figure(runs[1:], kind=kind, reports=reports[1:], colors=colors, fraction=True)
            for kind in ("interval", "cumulative", "from_first", "to_final")]
    for run in runs:
        drawn = {t.line.color for t in curves.data if t.legendgroup == run.label}
        drawn |= {t.line.color for fig in figs for t in fig.data if t.name == run.label}
        assert drawn == {colors[run.run_id]}, run.label
    assert len({colors[r.run_id] for r in runs}) == 3
    # Without a map the figure builds one from its own runs, so every trace still has a colour.
    assert all(t.line.color for t in sad_series_figure(runs, reports=reports).data)
    with pytest.raises(ValueError, match="no colour for run"):
        sad_series_figure(runs, reports=reports, colors={"a": "#000000"})


def test_eight_runs_get_eight_distinct_colours():
    # Issue #24: the colour is the method's; eight runs of one method are eight shades of its hue.
    runs = [record(f"r{i}", [1.0]) for i in range(8)]
    colors = list(run_colors(runs).values())
    assert len(set(colors)) == 8 and colors[0] == "#ff7f0e"  # STE's orange on every page
    assert all(abs(hue(c) - hue(colors[0])) < 3 for c in colors), colors
    lum = sorted(luminance(c) for c in colors)
    assert min(b / a for a, b in zip(lum, lum[1:])) > 1.1, colors  # each a visibly lighter or darker shade
    # Runs of different training methods get hues at least 25° apart (dense is grey).
    hues = [hue(c) for c in run_colors([record(m, [1.0], method=m) for m in ("ste", "srste", "gradual", "random")]).values()]
    closest = min(min(abs(a - b), 360 - abs(a - b)) for a, b in itertools.combinations(hues, 2))
    assert closest >= 25, (hues, closest)
    # Runs sharing an id (the same run listed twice) share a colour.
    assert run_colors([record("x", [1.0]), record("x", [1.0])]) == {"x": colors[0]}


def test_loss_axis_has_readable_1_2_5_ticks():
    fig = training_curves_figure([record("a", [2.3, 0.8, 0.2]), record("b", [1.9, 0.4, 0.12])])
    axis = fig.layout.yaxis2
    assert axis.type == "log"
    # Losses span 0.12 (test) to 2.53 (train = 1.1 × test): one 1-2-5 step beyond each end.
    assert list(axis.ticktext) == ["0.05", "0.1", "0.2", "0.5", "1", "2", "5"]
    assert list(axis.tickvals) == pytest.approx([0.05, 0.1, 0.2, 0.5, 1, 2, 5])


def test_sad_log_axis_ticks_name_their_value():
    runs = [record("a", [1.0])]
    # Interval SAD 40, 4 and 25 of 1000 weights: 0.4 % to 4 %.
    fig = sad_series_figure(runs, reports=[report([0, 40, 4, 25])], fraction=True)
    assert fig.layout.yaxis.type == "log"
    assert list(fig.layout.yaxis.ticktext) == ["0.2%", "0.5%", "1%", "2%", "5%", "10%"]
    counts = sad_series_figure(runs, reports=[report([0, 40, 4, 25])])
    assert list(counts.layout.yaxis.ticktext) == ["2", "5", "10", "20", "50", "100"]


def test_flip_colour_scale_runs_from_light_neutral_to_dark():
    fig = flip_count_figure(np.array([[0, 1, 2], [3, 4, 0]]))
    heat = fig.data[0]
    assert not heat.reversescale
    stops = [tuple(s) for s in heat.colorscale]
    assert stops[0][0] == 0 and stops[-1][0] == 1
    lum = [luminance(c) for _, c in stops]
    assert lum == sorted(lum, reverse=True) and len(set(lum)) == len(lum)  # 0 lightest, more flips darker
    r, g, b = (int(stops[0][1][i:i + 2], 16) for i in (1, 3, 5))
    assert r == g == b and lum[0] > 0.8  # 0 flips: a light grey, no hue
    assert lum[-1] < 0.1
    assert heat.zmin == 0 and heat.zmax == 4


def test_flip_maps_share_one_colour_scale():
    rng = np.random.default_rng(0)
    ste = rng.integers(0, 9, size=(6, 8))
    srste = rng.integers(0, 4, size=(6, 8))
    fig = flip_maps_figure([ste, srste], ["STE", "SR-STE"])
    top = max(int(ste.max()), int(srste.max()))
    assert len(fig.data) == 2
    for trace, counts in zip(fig.data, (ste, srste)):
        assert trace.zmin == 0 and trace.zmax == top
        assert np.array_equal(np.asarray(trace.z), counts)
    assert [bool(t.showscale) for t in fig.data] == [False, True]
    assert [a.text for a in fig.layout.annotations] == ["STE", "SR-STE"]
    # A run with no flip at all still shares the other's scale.
    quiet = flip_maps_figure([np.zeros((2, 4)), np.full((2, 4), 3.0)], ["a", "b"])
    assert [(t.zmin, t.zmax) for t in quiet.data] == [(0, 3), (0, 3)]
    with pytest.raises(ValueError, match="one name per"):
        flip_maps_figure([ste], ["a", "b"])
