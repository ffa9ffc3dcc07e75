"""Study figures (``sparsekit.study``): quality against sparsity with interval bands over seeds, the
Pareto front of quality against cost, and every setting's interval side by side."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

from ..stats import Interval
from ..study.aggregate import Group
from ._style import _BYTES_PER_MB, METHOD_COLORS, _empty, method_colors

if TYPE_CHECKING:
    from ..study.runner import StudyResult

def _groups(groups: Sequence[Group], metric: str, what: str) -> list[Group]:
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise ValueError(f"{what} takes a list of study Groups (sparsekit.study.summarize), "
                         f"got {type(groups).__name__}")
    for i, g in enumerate(groups):
        if not isinstance(g, Group):
            raise ValueError(f"{what}: item {i} is a {type(g).__name__}, not a study Group "
                             "(use sparsekit.study.summarize)")
        if metric not in g.metrics:
            raise ValueError(f"{what}: metric {metric!r} is not in the summaries (they have {sorted(g.metrics)})")
    return list(groups)


def variant_colors(groups: Sequence[Group]) -> dict[str, str]:
    """variant -> colour: the method's colour on every page (``METHOD_COLORS``), the λ_w variants of
    one method (SR-STE at several λ_w) shades of it in order of λ_w, whatever the order of ``groups``."""
    def lam(g: Group) -> float:
        return -1.0 if g.lambda_w is None else float(g.lambda_w)

    ranks = {m: sorted({lam(g) for g in groups if g.method == m}) for m in {g.method for g in groups}}
    return method_colors([(g.variant, g.method, ranks[g.method].index(lam(g))) for g in groups])


def _ok(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _with_cost(groups: Sequence[Group], cost: str) -> list[tuple[Group, float]]:
    """``(group, cost)`` for the groups with a finite cost, in order."""
    out = []
    for g in groups:
        c = g.cost(cost)
        if c is not None and math.isfinite(c):
            out.append((g, c))
    return out


def _whiskers(iv: Sequence[Interval]) -> dict[str, Any]:
    """Plotly error bars from intervals (none drawn where a setting has fewer than two seeds)."""
    return {"type": "data", "symmetric": False, "array": [i.high - i.mean if _ok(i.high) else 0 for i in iv],
            "arrayminus": [i.mean - i.low if _ok(i.low) else 0 for i in iv]}


def study_quality_figure(groups: Sequence[Group], metric: str, *, metric_label: str | None = None,
                         dense: float | None = None) -> go.Figure:
    """Quality against sparsity (pruned share of the prunable weights), one line per method with its
    interval over seeds as a band (one-shot studies of one model).

    Args:
        groups: summaries of one model (``sparsekit.study.summarize``).
        metric: the quality metric.
        metric_label: axis title (default the metric key).
        dense: the dense model's value, drawn as a dashed line when given.

    Returns:
        A plotly Figure.
    """
    groups = _groups(groups, metric, "study_quality_figure")
    label = metric_label or metric
    if not groups:
        return _empty("Quality against sparsity", "No finished cells yet")
    order = list(dict.fromkeys(g.variant for g in groups))
    colours = variant_colors(groups)
    fig = go.Figure()
    for variant in order:
        rows = sorted((g for g in groups if g.variant == variant), key=lambda g: 1 - g.kept_fraction)
        xs = [100 * (1 - g.kept_fraction) for g in rows]
        iv = [g.metrics[metric] for g in rows]
        colour = colours[variant]
        band = [(x, i) for x, i in zip(xs, iv) if _ok(i.low)]
        if band:
            fig.add_trace(go.Scatter(
                x=[x for x, _ in band] + [x for x, _ in reversed(band)],
                y=[i.high for _, i in band] + [i.low for _, i in reversed(band)],
                fill="toself", fillcolor=colour, opacity=0.18, line={"width": 0}, hoverinfo="skip",
                showlegend=False, name=f"{variant} interval"))
        fig.add_trace(go.Scatter(
            x=xs, y=[i.mean for i in iv], mode="lines+markers", name=variant, line={"color": colour},
            customdata=[[g.pattern, i.text(4), len(g.seeds)] for g, i in zip(rows, iv)],
            hovertemplate="%{customdata[0]}<br>" + label + ": %{customdata[1]}<br>seeds: %{customdata[2]}"
                          "<br>sparsity %{x:.1f}%<extra>" + variant + "</extra>"))
    if dense is not None and _ok(dense):
        fig.add_hline(y=dense, line={"dash": "dash", "color": METHOD_COLORS["dense"]}, annotation_text="dense")
    conf = groups[0].metrics[metric].confidence
    fig.update_layout(title=f"{label} against sparsity (bands: {conf:.0%} interval over seeds)",
                      xaxis_title="sparsity: pruned share of the prunable weights (%)", yaxis_title=label,
                      legend_title_text="method", hovermode="closest")
    return fig


def study_pareto_figure(groups: Sequence[Group], front: Sequence[Group], metric: str, *, cost: str = "kept_fraction",
                        metric_label: str | None = None) -> go.Figure:
    """Every setting as a point (mean with its interval) against its cost, the Pareto front joined.

    Args:
        groups: summaries of one model.
        front: the non-dominated ones (``sparsekit.study.pareto_front`` with the same metric and cost).
        metric: the quality metric.
        cost: ``kept_fraction`` (kept share of the prunable weights) or ``memory_bytes`` (weight memory in
            the cheapest format per layer).
        metric_label: axis title.

    Returns:
        A plotly Figure.
    """
    groups = _groups(groups, metric, "study_pareto_figure")
    if cost not in ("kept_fraction", "memory_bytes"):
        raise ValueError(f"cost must be kept_fraction or memory_bytes, got {cost!r}")
    label = metric_label or metric
    points = _with_cost(groups, cost)
    if not points:
        return _empty("Pareto front", "No finished cells with this cost")
    scale = 100.0 if cost == "kept_fraction" else 1.0 / _BYTES_PER_MB
    x_title = ("kept share of the prunable weights (%)" if cost == "kept_fraction"
               else "weight memory (MB, 1 MB = 2²⁰ bytes)")
    order = list(dict.fromkeys(g.variant for g, _ in points))
    colours = variant_colors(groups)
    fig = go.Figure()
    for variant in order:
        rows = [(g, c) for g, c in points if g.variant == variant]
        iv = [g.metrics[metric] for g, _ in rows]
        fig.add_trace(go.Scatter(
            x=[c * scale for _, c in rows], y=[i.mean for i in iv], mode="markers", name=variant,
            marker={"color": colours[variant], "size": 9},
            error_y=_whiskers(iv),
            customdata=[[g.pattern, i.text(4)] for (g, _), i in zip(rows, iv)],
            hovertemplate="%{customdata[0]}<br>" + label + ": %{customdata[1]}<br>cost %{x:.3g}<extra>" + variant
                          + "</extra>"))
    line = _front_line(_with_cost(front, cost), metric)
    if line:
        fig.add_trace(go.Scatter(
            x=[c * scale for _, c in line], y=[g.metrics[metric].mean for g, _ in line], mode="lines",
            name="Pareto front", line={"color": "#888888", "dash": "dot"},
            hovertext=[g.label for g, _ in line], hoverinfo="text"))
    hib = points[0][0].higher_is_better.get(metric, True)
    fig.update_layout(title=dict(text=f"Pareto front: {label} against cost<br><sup>the front joins the settings "
                                      "nothing beats on both</sup>"),
                      xaxis_title=x_title, yaxis_title=f"{label} ({'higher' if hib else 'lower'} is better)",
                      legend_title_text="method")
    return fig


COST_TOLERANCE = 1e-3
"""Costs within this share of each other count as equal on the drawn front (a 2:4 cell kept 50.00 % and
another 50.01 %: the worse of the two is not a point of the front)."""


def _front_line(points: Sequence[tuple[Group, float]], metric: str) -> list[tuple[Group, float]]:
    """The non-dominated points of ``points`` (costs equal within ``COST_TOLERANCE``), cheapest first: the
    front's line only ever goes towards better quality as the cost grows, never drops to a point that a
    point of (nearly) the same cost beats."""
    pts = [(g, c) for g, c in points if _ok(g.metrics[metric].mean)]
    if not pts:
        return []
    sign = 1.0 if pts[0][0].higher_is_better.get(metric, True) else -1.0

    def no_dearer(a: float, b: float) -> bool:  # cost a is at most cost b, within the tolerance
        return a <= b + COST_TOLERANCE * max(abs(a), abs(b))

    def beats(p: tuple[Group, float], q: tuple[Group, float]) -> bool:
        qp, qq = sign * p[0].metrics[metric].mean, sign * q[0].metrics[metric].mean
        return no_dearer(p[1], q[1]) and qp >= qq and (qp > qq or p[1] < q[1])

    keep = [q for q in pts if not any(beats(p, q) for p in pts if p is not q)]
    return sorted(keep, key=lambda gc: (gc[1], -sign * gc[0].metrics[metric].mean))


def study_interval_figure(groups: Sequence[Group], metric: str, *, metric_label: str | None = None) -> go.Figure:
    """Each setting's mean and interval over seeds as a dot with whiskers, grouped by pattern (the view
    for training studies, whose patterns are not a sparsity axis).

    Args:
        groups: summaries.
        metric: the metric.
        metric_label: axis title.

    Returns:
        A plotly Figure.
    """
    groups = _groups(groups, metric, "study_interval_figure")
    label = metric_label or metric
    if not groups:
        return _empty("Intervals over seeds", "No finished cells yet")
    order = list(dict.fromkeys(g.variant for g in groups))
    colours = variant_colors(groups)
    fig = go.Figure()
    for variant in order:
        rows = [g for g in groups if g.variant == variant]
        iv = [g.metrics[metric] for g in rows]
        fig.add_trace(go.Scatter(
            x=[f"{g.model} {g.pattern}" if len({x.model for x in groups}) > 1 else g.pattern for g in rows],
            y=[i.mean for i in iv], mode="markers", name=variant,
            marker={"color": colours[variant], "size": 10},
            error_y=_whiskers(iv),
            customdata=[[i.text(4), len(g.seeds)] for g, i in zip(rows, iv)],
            hovertemplate=label + ": %{customdata[0]}<br>seeds: %{customdata[1]}<extra>" + variant + "</extra>"))
    conf = groups[0].metrics[metric].confidence
    fig.update_layout(title=f"{label}: mean and {conf:.0%} interval over seeds", xaxis_title="pattern (N = kept)",
                      yaxis_title=label, legend_title_text="method", scattermode="group")
    return fig


def study_figure(result: StudyResult, metric: str | None = None, *, model: str | None = None) -> go.Figure:
    """A study run's plot (``StudyResult.figure()``): one-shot studies as quality against sparsity with
    interval bands (``study_quality_figure``), training studies as intervals per pattern
    (``study_interval_figure``).

    Args:
        result: ``sparsekit.study.run_study``'s result.
        metric: the metric (default: the first the summaries carry).
        model: the model (default: the first; a study of several models draws one at a time).

    Returns:
        A plotly Figure (a note when no cell has finished).
    """
    groups = result.summary()
    if not groups:
        return _empty("Study", "No finished cells yet")
    metric = metric or next(iter(groups[0].metrics))
    model = model or groups[0].model
    mine = [g for g in groups if g.model == model]
    if not mine:
        raise ValueError(f"no finished cells of model {model!r}; the study has {sorted({g.model for g in groups})}")
    if result.spec.kind == "oneshot":
        return study_quality_figure(mine, metric)
    return study_interval_figure(mine, metric)
