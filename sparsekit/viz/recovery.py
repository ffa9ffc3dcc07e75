"""Figures of recovery runs (``sparsekit.recovery.RecoveryRecord``): quality and loss curves, SAD per
interval, the gap recovered per run, and flip rate / mask oscillation, the last also for training
runs (``sparsekit.training.RunRecord``, which records the same per-step flips)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..flips import FlipWindow, window_series
from ._style import (
    METHOD_COLORS,
    ZERO_COLORSCALE,
    _empty,
    _log_axis,
    _number_text,
    _pct_text,
    method_colors,
    shade_level,
)

if TYPE_CHECKING:
    from ..recovery import RecoveryRecord

__all__ = ["flip_rate_figure", "recovery_colors", "recovery_curves_figure", "recovery_figure", "recovery_gap_figure",
           "recovery_sad_figure", "recovery_sad_heatmap"]


def _key(rec: Any) -> str:
    return rec.run_id or rec.label


def recovery_colors(records: Sequence[Any]) -> dict[str, str]:
    """One colour per run (keyed by its run id, or its label before it is saved), a function of its
    recovery mode (``MODE_COLORS``: fixed mask, STE, SR-STE, the same in New recovery, Saved runs and
    on every page), in the shade of its seed (``shade_level``); runs of one mode that meet on a shade
    are told apart (``method_colors``), whatever their order.

    Args:
        records: recovery (or training) runs; a record without a mode is coloured by its method.

    Returns:
        key -> colour, to pass to every figure of the same runs.
    """
    def mode(rec: Any) -> str:
        cfg = getattr(rec, "config", None)
        return str(getattr(cfg, "mode", None) or getattr(cfg, "method", None) or "")

    return method_colors([(_key(rec), mode(rec), shade_level(rec)) for rec in records])


def _colors(records: Sequence[Any], colors: Mapping[str, str] | None) -> list[str]:
    colors = recovery_colors(records) if colors is None else colors
    missing = [r.label for r in records if _key(r) not in colors]
    if missing:
        raise ValueError(f"no colour for run(s) {', '.join(missing)}: build the map with recovery_colors")
    return [colors[_key(r)] for r in records]


def recovery_curves_figure(records: Sequence[RecoveryRecord], *, colors: Mapping[str, str] | None = None) -> go.Figure:
    """The headline quality metric at every evaluation (left) and the training loss of every step
    (right, log axis) of one or more recovery runs.

    Args:
        records: recovery runs; the left panel also draws each distinct dense value as a dashed line.
        colors: ``recovery_colors`` of the runs on the page; built from ``records`` when None.

    Returns:
        A two-panel figure: per run one quality trace (left) and one loss trace (right).

    Raises:
        ValueError: ``colors`` without a colour for one of the runs.
    """
    if not records:
        return _empty("quality and loss", "no runs to show")
    metric = records[0].metric
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"{metric} (dashed: dense)", "training loss per step"))
    losses: list[float] = []
    for rec, color in zip(records, _colors(records, colors)):
        fig.add_trace(go.Scatter(x=rec.steps().tolist(), y=[iv.quality.get(rec.metric) for iv in rec.intervals],
                                 name=rec.label, legendgroup=rec.label, mode="lines+markers", line=dict(color=color),
                                 hovertemplate=f"{rec.label}<br>step %{{x}}<br>{rec.metric} %{{y:.4g}}<extra></extra>"),
                      row=1, col=1)
        steps = list(range(1, len(rec.step_loss) + 1))
        y = [v if math.isfinite(v) and v > 0 else None for v in rec.step_loss]
        losses += [v for v in y if v is not None]
        fig.add_trace(go.Scatter(x=steps, y=y, name=f"{rec.label} (loss)", legendgroup=rec.label, showlegend=False,
                                 mode="lines", line=dict(color=color, width=1),
                                 hovertemplate=f"{rec.label}<br>step %{{x}}<br>loss %{{y:.4g}}<extra></extra>"),
                      row=1, col=2)
    for dense in sorted({r.dense for r in records if math.isfinite(r.dense)}):
        fig.add_hline(y=dense, line=dict(color=METHOD_COLORS["dense"], dash="dash", width=1), row=1, col=1)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text=metric, row=1, col=1)
    fig.update_yaxes(title_text="loss", **(_log_axis(losses, _number_text) if losses else {"type": "log"}),
                     row=1, col=2)
    fig.update_layout(title="recovery: quality and loss", legend=dict(orientation="h", y=-0.25))
    return fig


def recovery_figure(record: RecoveryRecord, **kwargs: Any) -> go.Figure:
    """One recovery run's plot (``RecoveryRecord.figure()``): its quality at every evaluation next to the
    dense value, and its training loss (``recovery_curves_figure``; ``kwargs`` go there)."""
    return recovery_curves_figure([record], **kwargs)


def recovery_sad_figure(records: Sequence[RecoveryRecord], *, layer: str | None = None, from_start: bool = False,
                        fraction: bool = True, colors: Mapping[str, str] | None = None) -> go.Figure:
    """SAD at every evaluation of one or more recovery runs (a fixed-mask run is a flat zero).

    Args:
        records: recovery runs.
        layer: one pruned layer, or None for all pruned layers together.
        from_start: SAD to the pruned model's mask instead of SAD over each interval.
        fraction: as a fraction of the weights counted (axis in %) instead of counts.
        colors: ``recovery_colors`` of the runs; built from ``records`` when None.

    Returns:
        A figure with one ``Scatter`` per run (the step-0 point of the interval series is left out).
    """
    title = ("SAD from the pruned mask" if from_start else "SAD per evaluation interval") + \
        (" (% of weights)" if fraction else " (weights)")
    if not records:
        return _empty(title, "no runs to show")
    fig = go.Figure()
    for rec, color in zip(records, _colors(records, colors)):
        x, y = rec.steps().tolist(), rec.sad_series(layer, from_start=from_start, fraction=fraction).tolist()
        if not from_start:
            x, y = x[1:], y[1:]
        value = "%{y:.3%}" if fraction else "%{y:,.0f} weights"
        fig.add_trace(go.Scatter(x=x, y=y, name=rec.label, mode="lines+markers", line=dict(color=color),
                                 hovertemplate=f"{rec.label}<br>step %{{x}}<br>SAD {value}<extra></extra>"))
    fig.update_layout(title=title, legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(title_text="step" + ("" if from_start else " (end of interval)"))
    fig.update_yaxes(title_text="SAD" + (" (% of weights)" if fraction else " (weights)"),
                     tickformat="~%" if fraction else None, rangemode="tozero")
    return fig


def recovery_sad_heatmap(record: RecoveryRecord, *, fraction: bool = True) -> go.Figure:
    """Layer × interval heatmap of one run's interval SAD.

    Args:
        record: a recovery run.
        fraction: each layer's SAD as a fraction of its own weights (colour scale in %) or counts.

    Returns:
        A figure with one ``Heatmap``; column i is the interval ending at that evaluation step.
    """
    title = f"SAD per layer and interval · {record.label}"
    layers = record.history.layers
    if len(record.intervals) < 2 or not layers:
        return _empty(title, "at least one evaluation after step 0 is needed")
    z = np.stack([record.sad_series(name, fraction=fraction) for name in layers])[:, 1:]
    zero = not np.any(np.nan_to_num(z))
    # A fixed mask never changes: a flat grey on 0…1 reads as zero (not Viridis' middle on -0.5…0.5),
    # and the colour bar says so.
    fig = go.Figure(go.Heatmap(
        z=z.astype(np.float32), x=[str(s) for s in record.steps()[1:]], y=list(layers),
        colorscale=[list(c) for c in ZERO_COLORSCALE] if zero else "Viridis", zmin=0,
        zmax=1 if zero else None,
        colorbar=dict(title=dict(text="SAD" + (" (fraction)" if fraction else "") + ("<br>all zero" if zero else ""))),
        hovertemplate="%{y}<br>interval ending at step %{x}<br>SAD " + ("%{z:.3%}" if fraction else "%{z:,.0f}")
                      + "<extra></extra>"))
    fig.update_layout(title=title, height=max(300, 22 * len(layers) + 140))
    fig.update_xaxes(title_text="step (end of interval)", type="category")
    fig.update_yaxes(autorange="reversed")
    return fig


def _windows(rec: Any) -> tuple[list[float], list[FlipWindow]]:
    if hasattr(rec, "intervals"):  # a RecoveryRecord
        return [float(iv.step) for iv in rec.intervals], [iv.flips for iv in rec.intervals]
    # a training RunRecord: one window per mask snapshot (empty for runs saved before flips were recorded)
    return [float(s) for s in rec.history.steps][:len(rec.flip_windows)], list(rec.flip_windows)


def flip_rate_figure(records: Sequence[Any], *, layer: str | None = None, smooth: int = 1,
                     colors: Mapping[str, str] | None = None) -> go.Figure:
    """Flip rate of every step (left) and the share of oscillating weights per interval (right),
    for recovery runs or training runs.

    Args:
        records: ``RecoveryRecord``s or training ``RunRecord``s (anything with ``step_flip_rate``;
            interval windows from ``intervals`` or ``flip_windows``).
        layer: the right panel for one layer only (the per-step rate is always pooled over layers).
        smooth: draw the per-step rate as a trailing mean over this many steps (1 = raw).
        colors: ``recovery_colors`` of the runs; built from ``records`` when None.

    Returns:
        A two-panel figure, one trace per run in each panel.

    Raises:
        ValueError: ``smooth`` below 1, or ``colors`` without a colour for one of the runs.
    """
    if smooth < 1:
        raise ValueError(f"smooth must be at least 1 step, got {smooth}")
    if not records:
        return _empty("flip rate", "no runs to show")
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "flip rate per step" + (f" (mean of {smooth})" if smooth > 1 else ""),
        "oscillating weights" + (f" · {layer}" if layer else "")))  # per interval: the x axis
    for rec, color in zip(records, _colors(records, colors)):
        rate = np.asarray(rec.step_flip_rate, dtype=np.float64)
        if smooth > 1 and rate.size:
            cum = np.cumsum(np.insert(rate, 0, 0.0))
            lo = np.maximum(np.arange(1, rate.size + 1) - smooth, 0)
            rate = (cum[1:] - cum[lo]) / (np.arange(1, rate.size + 1) - lo)
        fig.add_trace(go.Scatter(x=list(range(1, rate.size + 1)), y=rate.tolist(), name=rec.label,
                                 legendgroup=rec.label, mode="lines", line=dict(color=color, width=1),
                                 hovertemplate=f"{rec.label}<br>step %{{x}}<br>flip rate %{{y:.4%}}<extra></extra>"),
                      row=1, col=1)
        steps, windows = _windows(rec)
        osc = window_series(windows, "oscillation_rate", layer).tolist() if windows else []
        fig.add_trace(go.Scatter(x=steps[1:], y=osc[1:], name=f"{rec.label} (oscillation)", legendgroup=rec.label,
                                 showlegend=False, mode="lines+markers", line=dict(color=color),
                                 hovertemplate=f"{rec.label}<br>interval ending at step %{{x}}<br>"
                                               "oscillating %{y:.4%}<extra></extra>"),
                      row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="changed mask entries", tickformat="~%", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="entries that flipped back", tickformat="~%", rangemode="tozero", row=1, col=2)
    fig.update_layout(title="flip rate and mask oscillation", legend=dict(orientation="h", y=-0.25))
    return fig


def recovery_gap_figure(records: Sequence[RecoveryRecord], *, colors: Mapping[str, str] | None = None) -> go.Figure:
    """The share of the dense-to-pruned gap each run won back, one bar per run.

    Args:
        records: recovery runs (e.g. ``compare_modes(...).records.values()``).
        colors: ``recovery_colors`` of the runs; built from ``records`` when None.

    Returns:
        A bar figure; runs whose pruning opened no gap are labelled "no gap" at 0.
    """
    records = list(records)
    if not records:
        return _empty("gap recovered", "no runs to show")
    values = [r.gap_recovered for r in records]
    text = [_pct_text(v) if v is not None else "no gap" for v in values]
    fig = go.Figure(go.Bar(
        x=short_run_labels(records), y=[v if v is not None else 0.0 for v in values], text=text,
        marker=dict(color=_colors(records, colors)),
        customdata=[[r.before, r.after, r.dense, r.label] for r in records],
        hovertemplate="%{customdata[3]}<br>gap recovered %{text}<br>before %{customdata[0]:.4g}, "
                      "after %{customdata[1]:.4g}, dense %{customdata[2]:.4g}<extra></extra>"))
    fig.update_layout(title=dict(text=f"gap recovered ({records[0].metric})<br><sup>(after − before) / "
                                      "(dense − before); full run names in the hover</sup>"))
    fig.update_xaxes(tickangle=0)
    fig.update_yaxes(tickformat="~%", title_text="gap recovered")
    return fig


SHORT_LABEL = 18
"""Most characters of a run's name under its bar (the full name is in the hover)."""


def short_run_labels(records: Sequence[Any]) -> list[str]:
    """Short, distinct bar labels: ``1 · <recovery part of the name>``, cut to ``SHORT_LABEL`` characters."""
    out = []
    for i, r in enumerate(records, 1):
        head = str(r.label).split(" · ")[0]
        head = head if len(head) <= SHORT_LABEL else head[:SHORT_LABEL - 1] + "…"
        out.append(f"{i} · {head}")
    return out
