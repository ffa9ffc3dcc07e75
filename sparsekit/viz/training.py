"""Figures of the Training & topology page: accuracy/loss curves and SAD of ``RunRecord``s, the
layer × time SAD heatmap, flip counts per weight, and the seed study (STE vs SR-STE over seeds)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..maskstats import DEFAULT_MAX_CELLS
from ..training.seedresults import METRICS
from ._style import (
    FLIP_COLORSCALE,
    METHOD_COLORS,
    ZERO_COLORSCALE,
    _empty,
    _log_axis,
    _matrix_axes,
    _number_text,
    _pct_text,
    method_colors,
    shade_level,
)

if TYPE_CHECKING:
    from ..seedstudy import SeedStudyResult
    from ..stats import Interval
    from ..topology import SadReport
    from ..training import RunRecord

_SAD_TITLES = {
    "interval": "SAD between consecutive snapshots",
    "cumulative": "cumulative SAD (sum of the interval SADs)",
    "from_first": "SAD from the first snapshot",
    "to_final": "SAD to the final snapshot",
}


def run_key(run: RunRecord) -> str:
    """The key of a run in a colour map: its run id, or its label before it is saved."""
    return run.run_id or run.label


def run_colors(runs: Sequence[RunRecord]) -> dict[str, str]:
    """One colour per run, a function of the run: its training method's colour (``METHOD_COLORS``:
    dense, STE, SR-STE, gradual, random) in the shade of its N:M pattern and seed (``shade_level``;
    STE 2:4 seed 0 is STE's own colour). A run has that colour in every figure, live or saved, whatever
    runs are picked and in what order; two runs of one method that meet on a shade are told apart
    (``method_colors``). Pass the map to every figure of the same runs.

    Args:
        runs: training runs.

    Returns:
        ``run_key(run)`` -> colour.
    """
    return method_colors([(run_key(run), run.config.method, shade_level(run)) for run in runs])


def _colors_for(runs: Sequence[RunRecord], colors: Mapping[str, str] | None) -> list[str]:
    colors = run_colors(runs) if colors is None else colors
    missing = [run.label for run in runs if run_key(run) not in colors]
    if missing:
        raise ValueError(f"no colour for run(s) {', '.join(missing)}: build the map with run_colors over every run")
    return [colors[run_key(run)] for run in runs]


def _count_text(v: float) -> str:
    return f"{v:,.0f}" if v >= 1 else f"{v:g}"


def training_curves_figure(runs: Sequence[RunRecord], *, colors: Mapping[str, str] | None = None) -> go.Figure:
    """Held-out accuracy and loss per epoch of one or more runs, side by side.

    Args:
        runs: training runs (``sparsekit.training.RunRecord``), each drawn from its per-epoch
            metrics under its ``label``.
        colors: ``run_colors`` of the runs on the page (the same map for every figure keeps a run's
            colour); built from ``runs`` when None.

    Returns:
        A two-panel figure: per run, one accuracy trace (left), then a test-loss trace (solid) and a
        train-loss trace (dotted) on the right, on a log axis with 1-2-5 ticks (0.1, 0.2, 0.5, 1, 2).

    Raises:
        ValueError: ``colors`` without a colour for one of the runs.
    """
    if not runs:
        return _empty("accuracy and loss", "no runs to show")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("held-out accuracy (%)",
                                                        "cross-entropy (solid: held-out, dotted: train)"))
    losses = []
    for run, color in zip(runs, _colors_for(runs, colors)):
        label = run.label
        losses += [v for e in run.epochs for v in (e.test_loss, e.train_loss) if math.isfinite(v) and v > 0]
        epoch = [e.epoch for e in run.epochs]
        fig.add_trace(go.Scatter(x=epoch, y=[e.test_accuracy for e in run.epochs], name=label, legendgroup=label,
                                 mode="lines+markers", line=dict(color=color),
                                 hovertemplate=f"{label}<br>epoch %{{x:.2f}}<br>accuracy %{{y:.2f}}%<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=epoch, y=[e.test_loss for e in run.epochs], name=f"{label} (test)",
                                 legendgroup=label, showlegend=False, mode="lines", line=dict(color=color),
                                 hovertemplate=f"{label}<br>epoch %{{x:.2f}}<br>test loss %{{y:.4f}}<extra></extra>"),
                      row=1, col=2)
        fig.add_trace(go.Scatter(x=epoch, y=[e.train_loss for e in run.epochs], name=f"{label} (train)",
                                 legendgroup=label, showlegend=False, mode="lines",
                                 line=dict(color=color, dash="dot"),
                                 hovertemplate=f"{label}<br>epoch %{{x:.2f}}<br>train loss %{{y:.4f}}<extra></extra>"),
                      row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
    # plotly's own log labels read "2 5 0.1 2 5": 1-2-5 ticks with the whole number on each.
    fig.update_yaxes(title_text="loss", **(_log_axis(losses, _number_text) if losses else {"type": "log"}),
                     row=1, col=2)
    fig.update_layout(title="accuracy and loss", legend=dict(orientation="h", y=-0.25))
    return fig


def sad_series_figure(runs: Sequence[RunRecord], *, kind: str = "interval", layer: str | None = None,
                      fraction: bool = False, log_y: bool | None = None,
                      reports: Sequence[SadReport] | None = None,
                      colors: Mapping[str, str] | None = None) -> go.Figure:
    """SAD over training for one or more runs (one line each).

    Args:
        runs: training runs (``sparsekit.training.RunRecord``), each labelled with its ``label``.
        kind: which series: ``interval`` (the value at snapshot i covers the interval ending there;
            the first snapshot's 0 is not drawn), ``cumulative``, ``from_first`` or ``to_final``.
        layer: one recorded layer, or None for the sum over all sparse layers.
        fraction: values as fractions of the weights counted (axis in %) instead of raw counts.
        log_y: log y axis; default True for ``interval``. Zeros cannot sit on a log axis, so they
            are left out there (a gap), and a note says how many; when no value is above 0 (fixed
            masks) the axis is linear instead. A linear axis starts at 0.
        reports: each run's ``run.sad()``, in the same order, where the caller has them already
            (it reads every mask snapshot); computed here when None.
        colors: ``run_colors`` of the runs on the page; built from ``runs`` when None.

    Returns:
        A figure with one ``Scatter`` per run; a log axis has 1-2-5 ticks.

    Raises:
        ValueError: unknown kind, a layer a run did not record, ``reports`` not one per run, or
            ``colors`` without a colour for one of the runs.
    """
    if kind not in _SAD_TITLES:
        raise ValueError(f"kind must be one of {', '.join(_SAD_TITLES)}, got {kind!r}")
    if reports is not None and len(reports) != len(runs):
        raise ValueError(f"{len(reports)} SAD reports for {len(runs)} runs")
    title = _SAD_TITLES[kind] + (" (% of weights)" if fraction else " (weights)")
    if not runs:
        return _empty(title, "no runs to show")
    log_y = (kind == "interval") if log_y is None else bool(log_y)
    series = []
    for i, run in enumerate(runs):
        report = reports[i] if reports is not None else run.sad()
        x = [float(v) for v in report.epochs]
        y = [float(v) for v in report.series(kind, layer, fraction=fraction)]
        series.append((x[1:], y[1:]) if kind == "interval" else (x, y))
    all_zero = not any(v > 0 for _, y in series for v in y)
    log_y = log_y and not all_zero  # nothing to draw on a log axis: a flat zero on a linear one
    fig = go.Figure()
    hidden = 0
    drawn: list[float] = []
    for (x, y), run, color in zip(series, runs, _colors_for(runs, colors)):
        shown: list[float | None] = list(y)
        if log_y:
            hidden += sum(1 for v in y if v <= 0)
            shown = [v if v > 0 else None for v in y]
            drawn += [v for v in shown if v is not None]
        value = "%{y:.3%}" if fraction else "%{y:,.0f} weights"
        fig.add_trace(go.Scatter(x=x, y=shown, name=run.label, mode="lines+markers", connectgaps=False,
                                 line=dict(color=color),
                                 hovertemplate=f"{run.label}<br>epoch %{{x:.2f}}<br>SAD {value}<extra></extra>"))
    fig.update_layout(title=title, legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(title_text="epoch" + (" (end of interval)" if kind == "interval" else ""))
    axis_title = "SAD" + (" (% of weights)" if fraction else " (weights)")
    if log_y:
        # plotly's own log labels repeat bare digits ("2 5 2 5"): 1-2-5 ticks with the whole value.
        fig.update_yaxes(title_text=axis_title, **(_log_axis(drawn, _pct_text if fraction else _count_text)
                                                   if drawn else {"type": "log"}))
    else:
        # SAD is never negative: the axis starts at 0, so an all-zero run (a fixed mask) lies on the floor
        # of a 0…1 axis instead of in the middle of plotly's −1…1.
        fig.update_yaxes(title_text=axis_title, type="linear", tickformat="~%" if fraction else None,
                         rangemode="tozero")
    if hidden:
        fig.add_annotation(text=f"{hidden} zero value(s) not drawn on the log axis", showarrow=False,
                           x=1, y=1.02, xref="paper", yref="paper", xanchor="right", font=dict(size=11))
    return fig


def sad_heatmap_figure(layers: Sequence[str], epochs: Sequence[float], values: Any, *,
                       fraction: bool = True, title: str = "SAD per layer and interval") -> go.Figure:
    """Layer × time heatmap of interval SAD.

    Args:
        layers: row labels, in model order (top to bottom).
        epochs: the snapshot positions; column i is the interval ending at ``epochs[i]`` (the first
            snapshot's column is dropped).
        values: ``[layers, snapshots]`` array (``SadReport.matrix``).
        fraction: values are fractions of each layer's weights (colour scale in %) or raw counts.
        title: figure title.

    Returns:
        A figure with one ``Heatmap``.

    Raises:
        ValueError: shapes that do not match the labels.
    """
    z = np.asarray(values, dtype=np.float64)
    if z.ndim != 2 or z.shape != (len(layers), len(epochs)):
        raise ValueError(f"values must be [{len(layers)} layers, {len(epochs)} snapshots], got {z.shape}")
    if z.shape[1] < 2 or not len(layers):
        return _empty(title, "at least two snapshots of a sparse layer are needed")
    zero = not np.any(np.nan_to_num(z[:, 1:]))
    # A zero-only map reads as zero: flat grey on 0…1, and the colour bar says so.
    fig = go.Figure(go.Heatmap(
        z=z[:, 1:].astype(np.float32), x=[float(e) for e in epochs[1:]], y=[str(n) for n in layers],
        colorscale=[list(c) for c in ZERO_COLORSCALE] if zero else "Viridis", zmin=0, zmax=1 if zero else None,
        colorbar=dict(title=dict(text="SAD" + (" (fraction)" if fraction else "") + ("<br>all zero" if zero else ""))),
        hovertemplate="%{y}<br>interval ending at epoch %{x:.2f}<br>SAD "
                      + ("%{z:.3%}" if fraction else "%{z:,.0f}") + "<extra></extra>",
    ))
    fig.update_layout(title=title, height=max(280, 140 + 28 * len(layers)))
    fig.update_xaxes(title_text="epoch (end of interval)")
    fig.update_yaxes(title_text="layer", type="category", autorange="reversed")
    return fig


def _flip_grid(counts: Any, max_cells: int) -> tuple[torch.Tensor, int]:
    c = torch.as_tensor(np.asarray(counts), dtype=torch.float32)
    if c.dim() != 2:
        raise ValueError(f"counts must be a 2-D matrix, got shape {tuple(c.shape)}")
    if c.numel() and float(c.min()) < 0:
        raise ValueError("flip counts cannot be negative")
    rows, cols = c.shape
    tile = 1
    if rows * cols > max_cells:
        tile = math.ceil(math.sqrt(rows * cols / max_cells))
        c = torch.nn.functional.avg_pool2d(c[None, None], tile, ceil_mode=True, count_include_pad=False)[0, 0]
    return c, tile


def _flip_heatmap(c: torch.Tensor, tile: int, zmax: float, showscale: bool) -> go.Heatmap:
    what = "flips" if tile == 1 else "mean flips"
    return go.Heatmap(
        z=c.numpy(), x=[j * tile for j in range(c.shape[1])], y=[i * tile for i in range(c.shape[0])],
        colorscale=[list(stop) for stop in FLIP_COLORSCALE], zmin=0.0, zmax=zmax, showscale=showscale,
        colorbar=dict(title=dict(text=what)),
        hovertemplate="row %{y}, column %{x}<br>" + what + ": %{z:.3g}<extra></extra>",
    )


def flip_count_figure(counts: Any, *, title: str = "flips per weight",
                      max_cells: int = DEFAULT_MAX_CELLS) -> go.Figure:
    """Heatmap of how often each weight changed keep/prune state (one layer, as a matrix).

    Args:
        counts: 2-D array of flip counts, rows = output units, columns = N:M groups' entries in order
            (``sparsekit.topology.matrix_view`` of ``flip_counts``).
        title: figure title.
        max_cells: most cells sent; a larger matrix is averaged over square tiles (the title says so).

    Returns:
        A figure with one ``Heatmap`` (exact counts when the matrix fits) on ``FLIP_COLORSCALE``:
        0 flips light grey, the most flips darkest.

    Raises:
        ValueError: not a 2-D array, or negative counts.
    """
    return flip_maps_figure([counts], [""], title=title, max_cells=max_cells)


def flip_maps_figure(counts: Sequence[Any], names: Sequence[str], *, title: str = "flips per weight",
                     max_cells: int = DEFAULT_MAX_CELLS) -> go.Figure:
    """Flip-count heatmaps of the same layer in several runs, side by side on one colour scale
    (one ``zmax`` for all, so the same shade means the same count in every panel).

    Args:
        counts: one 2-D flip-count matrix per run (see ``flip_count_figure``).
        names: a panel title per matrix (e.g. the run labels).
        title: figure title.
        max_cells: most cells sent per panel; larger matrices are averaged over square tiles.

    Returns:
        One ``Heatmap`` per panel, all with ``zmin`` 0 and ``zmax`` the largest value drawn in any
        panel; one colour bar.

    Raises:
        ValueError: no matrix, not one name per matrix, not 2-D, or negative counts.
    """
    if not counts or len(names) != len(counts):
        raise ValueError(f"give one name per flip-count matrix, got {len(names)} names for {len(counts)} matrices")
    grids = [_flip_grid(c, max_cells) for c in counts]
    tile = max(t for _, t in grids)
    if tile > 1:
        title = f"{title} (mean over {tile}×{tile} tiles)"
    # A flat 0 map still needs a range; 1 keeps its cells at the scale's light end.
    zmax = max([float(g.max()) for g, _ in grids if g.numel()] + [0.0]) or 1.0
    if len(grids) == 1:
        fig = go.Figure(_flip_heatmap(*grids[0], zmax, True))
    else:
        fig = make_subplots(rows=1, cols=len(grids), subplot_titles=list(names), horizontal_spacing=0.08)
        for col, (grid, t) in enumerate(grids, start=1):
            fig.add_trace(_flip_heatmap(grid, t, zmax, col == len(grids)), row=1, col=col)
    fig.update_layout(title=title)
    _matrix_axes(fig)
    return fig


def run_figure(run: RunRecord, what: str = "curves", **kwargs: Any) -> go.Figure:
    """One training run's plot (``RunRecord.figure()``).

    Args:
        run: the run.
        what: ``curves`` (held-out accuracy and loss per epoch, ``training_curves_figure``) or ``sad``
            (interval SAD as % of the sparse weights, ``sad_series_figure``; ``kwargs`` go there).

    Returns:
        A plotly Figure.
    """
    if what == "curves":
        return training_curves_figure([run], **kwargs)
    if what == "sad":
        return sad_series_figure([run], **{"fraction": True, **kwargs})
    raise ValueError(f"what must be curves or sad, got {what!r}")


# ----------------------------------------------------------------------------- seed studies

STUDY_COLORS = {method: METHOD_COLORS[method] for method in ("ste", "srste")}
"""STE and SR-STE in their colours of every other page."""


def _ci_error(intervals: Sequence[Interval]) -> dict[str, Any]:
    hi = [0.0 if math.isnan(iv.high) else iv.high - iv.mean for iv in intervals]
    lo = [0.0 if math.isnan(iv.low) else iv.mean - iv.low for iv in intervals]
    return {"type": "data", "symmetric": False, "array": hi, "arrayminus": lo, "thickness": 1.5, "width": 6}


def seed_study_figure(result: SeedStudyResult, metric: str = "late_sad_pct") -> go.Figure:
    """Per-seed values of one metric for STE and SR-STE at each pattern: dots joined by seed (the
    pairing), and each method's mean with its confidence interval.

    Args:
        result: a ``sparsekit.seedstudy.SeedStudyResult``.
        metric: a key of ``sparsekit.seedstudy.METRICS``.

    Returns:
        Per pattern and seed, a grey line joining its STE and SR-STE values; per pattern and
        method, a diamond at the mean with its confidence interval as error bars.

    Raises:
        ValueError: an unknown metric.
    """
    # Imported on use: the seed study brings in the training package, which no other figure needs.
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    name, unit, definition = METRICS[metric]
    fig = go.Figure()
    lam = result.config.lambda_w
    rows = {(r.n, r.m, r.method): r for r in result.summary()}
    for n, m in result.config.patterns:
        ste = result.values("ste", n, m, 0.0, metric)
        sr = result.values("srste", n, m, lam, metric)
        xs = (f"{n}:{m} STE", f"{n}:{m} SR-STE")
        for seed in [s for s in ste if s in sr]:
            fig.add_trace(go.Scatter(x=list(xs), y=[ste[seed], sr[seed]], mode="lines+markers",
                                     line={"color": "rgba(120,120,120,0.35)", "width": 1},
                                     marker={"size": 5, "color": "rgba(120,120,120,0.6)"}, showlegend=False,
                                     hovertemplate=f"seed {seed}<br>%{{x}}: %{{y:.3g}}<extra></extra>"))
        for method, x in zip(("ste", "srste"), xs):
            iv = rows[(n, m, method)].metrics[metric]
            fig.add_trace(go.Scatter(
                x=[x], y=[iv.mean], mode="markers", marker={"size": 13, "color": STUDY_COLORS[method],
                                                            "symbol": "diamond"},
                error_y=_ci_error([iv]), name="STE" if method == "ste" else f"SR-STE (λ_w={lam:g})",
                legendgroup=method, showlegend=(n, m) == result.config.patterns[0],
                hovertemplate=f"{x}<br>mean %{{y:.3g}} {unit}<br>{iv.confidence:.0%} CI "
                              f"[{iv.low:.3g}, {iv.high:.3g}]<br>{iv.n} seeds<extra></extra>"))
    fig.update_layout(title=f"{name} over {result.config.seeds} seeds (grey: one seed, paired; diamond: mean "
                            f"with {result.config.confidence:.0%} CI)",
                      yaxis_title=f"{name} ({unit})", xaxis_title=definition, height=420,
                      legend={"orientation": "h", "y": -0.25})
    if metric != "accuracy":  # SAD and flip shares are never negative: their axis starts at 0
        fig.update_yaxes(rangemode="tozero")
    return fig


def paired_difference_figure(result: SeedStudyResult,
                             metrics: Sequence[str] = ("late_sad_pct", "late_flipped_pct", "accuracy")) -> go.Figure:
    """SR-STE − STE per pattern, one panel per metric: the mean paired difference with its interval,
    and a zero line (an interval crossing it shows no difference).

    Args:
        result: a ``sparsekit.seedstudy.SeedStudyResult``.
        metrics: keys of ``sparsekit.seedstudy.METRICS``, one panel each.

    Returns:
        One ``Scatter`` per panel: x the patterns (with how many pairs SR-STE came out lower), y the
        mean difference in percentage points, coloured grey where the interval includes 0.
    """
    comps = {(c.n, c.m, c.metric): c for c in result.comparisons()}
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[METRICS[k][0] for k in metrics])
    for col, metric in enumerate(metrics, start=1):
        labels, intervals = [], []
        for n, m in result.config.patterns:
            c = comps[(n, m, metric)]
            labels.append(f"{n}:{m}<br>SR-STE lower {c.paired.a_lower}/{c.paired.n}")
            intervals.append(c.paired.diff)
        colors = ["#7f7f7f" if iv.includes_zero else ("#2ca02c" if (iv.mean < 0) == (metric != "accuracy")
                                                        else "#d62728") for iv in intervals]
        fig.add_trace(go.Scatter(x=labels, y=[iv.mean for iv in intervals], mode="markers",
                                 marker={"size": 11, "color": colors},
                                 error_y=_ci_error(intervals), showlegend=False,
                                 hovertemplate="%{x}: %{y:+.3g} pp<extra></extra>"), row=1, col=col)
        fig.add_hline(y=0, line={"color": "black", "width": 1, "dash": "dot"}, row=1, col=col)
        fig.update_yaxes(title_text="SR-STE − STE (pp)" if col == 1 else None, row=1, col=col)
    fig.update_layout(title=f"Paired difference SR-STE − STE, mean and {result.config.confidence:.0%} CI "
                            "(grey: interval includes 0)", height=380)
    return fig


def lambda_sweep_figure(result: SeedStudyResult) -> go.Figure:
    """Late SAD and final accuracy against SR-STE's λ_w (λ_w = 0 is STE), means with intervals.

    Args:
        result: a ``sparsekit.seedstudy.SeedStudyResult``.

    Returns:
        Two panels (late SAD, accuracy), one ``Scatter`` each over the swept λ_w values; a note
        instead when the study has no sweep.
    """
    rows = result.lambda_rows()
    if not rows:
        return _empty("λ_w sweep", "this study has no λ_w sweep")
    n, m = result.config.patterns[0]
    labels = [("0 (STE)" if r.lambda_w == 0 else f"{r.lambda_w:g}") for r in rows]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("late SAD (% of sparse weights)", "final accuracy (%)"))
    for col, metric in enumerate(("late_sad_pct", "accuracy"), start=1):
        ivs = [r.metrics[metric] for r in rows]
        fig.add_trace(go.Scatter(x=labels, y=[iv.mean for iv in ivs], mode="lines+markers", error_y=_ci_error(ivs),
                                 marker={"size": 9, "color": STUDY_COLORS["srste"]}, showlegend=False,
                                 hovertemplate="λ_w %{x}: %{y:.3g}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="λ_w", type="category", row=1, col=col)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)  # late SAD is never negative
    fig.update_layout(title=f"SR-STE's λ_w at {n}:{m}, {result.config.seeds} seeds, mean and "
                            f"{result.config.confidence:.0%} CI", height=380)
    return fig
