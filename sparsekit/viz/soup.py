"""The model-soup figure (``sparsekit.study.soupstudy``): per pruned setting, the soup against its best and mean
ingredient, with the pruned model before recovery and the dense model, each as a mean with its interval over
outer seeds."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._style import MODE_COLORS, _empty, method_color, shade

if TYPE_CHECKING:
    from ..stats import Interval
    from ..study.soupstudy import SoupGroup, SoupStudyResult

DENSE_COLOR = "#4d4d4d"
DIFF_STYLE = {"soup_minus_best": ("soup − best", "triangle-up"), "soup_minus_mean": ("soup − mean", "circle-open")}
"""Paired difference -> legend name and marker symbol (the right panel; the marker of the level it subtracts)."""
LEVEL_STYLE = {"dense": ("dense", "line-ew-open"), "before": ("pruned, before recovery", "x"),
               "mean": ("mean ingredient", "circle-open"), "best": ("best ingredient", "triangle-up"),
               "soup": ("soup", "diamond")}
"""Level -> legend name and marker symbol."""


def soup_level_colors(method: str) -> dict[str, str]:
    """One colour per level: the soup and its ingredients in shades of the fixed-mask recovery mode's colour
    (``MODE_COLORS["fixed"]``: every ingredient is a fixed-mask run), the pruned model in its pruning method's
    colour (``method_color``), dense in dark grey."""
    fixed = MODE_COLORS["fixed"]
    return {"dense": DENSE_COLOR, "before": method_color(method), "mean": shade(fixed, 0.35),
            "best": shade(fixed, -0.3), "soup": fixed}


def _whiskers(iv: Sequence["Interval"]) -> dict[str, Any]:
    ok = [not math.isnan(i.low) for i in iv]
    return {"type": "data", "symmetric": False, "array": [i.high - i.mean if o else 0 for i, o in zip(iv, ok)],
            "arrayminus": [i.mean - i.low if o else 0 for i, o in zip(iv, ok)]}


def soup_figure(result: "SoupStudyResult | Sequence[SoupGroup]", *, metric_label: str | None = None) -> go.Figure:
    """The soup against the best and the mean ingredient, the pruned model before recovery and dense: one dot
    with its interval over outer seeds per level and pruned setting (left), and the paired differences soup −
    best and soup − mean with their intervals around a zero line (right; ``SoupStudyResult.figure()``).

    The left axis spans the levels' intervals, not the metric's whole range: the levels differ by a few tenths
    where the metric runs from 0 to 100.

    Args:
        result: a ``SoupStudyResult`` or its ``groups``.
        metric_label: the y-axis title (default: the study's label of the metric, with its unit).

    Returns:
        A plotly Figure: the five level traces first (``dense`` … ``soup``), then the two differences.
    """
    from ..study.aggregate import METRIC_UNITS
    from ..study.aggregate import metric_label as label_of

    groups: list[SoupGroup] = list(result.groups if hasattr(result, "groups") else result)
    if not groups:
        return _empty("Model soup", "No soup yet: every ingredient of an outer seed must be done")
    several = len({g.model for g in groups}) > 1
    xs = [f"{g.model} {g.label}" if several else g.label for g in groups]
    label = metric_label or label_of(groups[0].metric)
    unit = METRIC_UNITS.get(groups[0].metric, "").strip() or "difference"
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.12,
                        subplot_titles=("levels", f"paired by outer seed ({unit})"))
    lows, highs = [], []
    for level in ("dense", "before", "mean", "best", "soup"):
        name, symbol = LEVEL_STYLE[level]
        iv = [g.levels[level] for g in groups]
        colours = [soup_level_colors(g.method)[level] for g in groups]
        lows += [i.low if not math.isnan(i.low) else i.mean for i in iv]
        highs += [i.high if not math.isnan(i.high) else i.mean for i in iv]
        fig.add_trace(go.Scatter(
            x=xs, y=[i.mean for i in iv], mode="markers", name=name,
            marker={"color": colours, "size": 12 if level == "soup" else 10, "symbol": symbol,
                    "line": {"width": 2, "color": colours}},
            error_y={**_whiskers(iv), "color": colours[0]},
            customdata=[[i.text(4), i.n] for i in iv],
            hovertemplate=f"{name}<br>{label}: %{{customdata[0]}}<br>outer seeds: %{{customdata[1]}}<extra></extra>"),
            row=1, col=1)
    fixed = MODE_COLORS["fixed"]
    for attr, colour in (("soup_minus_best", shade(fixed, -0.3)), ("soup_minus_mean", shade(fixed, 0.35))):
        name, symbol = DIFF_STYLE[attr]
        iv = [getattr(g, attr).diff for g in groups]
        fig.add_trace(go.Scatter(
            x=xs, y=[i.mean for i in iv], mode="markers", name=name,
            marker={"color": colour, "size": 10, "symbol": symbol, "line": {"width": 2, "color": colour}},
            error_y={**_whiskers(iv), "color": colour},
            customdata=[[i.text(3), i.n] for i in iv],
            hovertemplate=f"{name}<br>%{{customdata[0]}} {unit}<br>pairs: %{{customdata[1]}}<extra></extra>"),
            row=1, col=2)
    fig.add_hline(y=0, line={"color": "#888", "dash": "dash", "width": 1}, row=1, col=2)
    low, high = min(lows), max(highs)
    pad = max(0.15 * (high - low), 1e-3 * max(abs(high), 1.0))
    conf = groups[0].levels["soup"].confidence
    fig.update_yaxes(title_text=label, range=[low - pad, high + pad], row=1, col=1)
    fig.update_yaxes(title_text=f"difference ({unit})", zeroline=False, row=1, col=2)
    fig.update_xaxes(title_text="pruned setting (N = kept)", row=1, col=1)
    fig.update_layout(title=f"Soup vs its ingredients: mean and {conf:.0%} interval over outer seeds",
                      scattermode="group", legend_title_text="level")
    return fig


__all__ = ["DENSE_COLOR", "LEVEL_STYLE", "soup_figure", "soup_level_colors"]
