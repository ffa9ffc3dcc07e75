"""The equal-cost figure (``sparsekit.structured.equal_cost``): quality of every family of structure against
kept parameters of the whole model, or against stored bytes in each family's own format."""
from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from ..structured.equal_cost import FAMILIES, FamilyPoints, FamilyRow
from ._style import _BYTES_PER_MB, FAMILY_COLORS, _empty

X_AXES = {
    "params": "kept parameters, all of the model's (count; masked weights by their kept entries)",
    "bytes": "stored bytes in each family's format (MB; bitmap, N:M values + index bits, dense, Monarch factors)",
}
"""The two x views and their axis titles (with units)."""

_POSITIONS = ("top center", "top right", "top left", "bottom center", "bottom right", "bottom left", "middle right",
              "middle left")
_PLOT_PX = (840.0, 320.0)
"""The plot area the label placement assumes (a ~1000 x 500 px figure; the Compare page's is of that order)."""


def _label_positions(traces: list[tuple[list[float], list[float], list[str], bool]], hline: float | None,
                     log_y: bool) -> list[list[str]]:
    """A text position per point that keeps the setting labels off each other, off the markers and off the lines.

    Greedy, in pixels of an assumed plot area (``_PLOT_PX``): each label takes the first of ``_POSITIONS`` with
    the least overlap (other labels count most, then markers, leaving the plot area, the lines, the dense line)."""
    xs = [x for t in traces for x in t[0]]
    ys = [math.log10(y) if log_y else y for t in traces for y in t[1] if not log_y or y > 0]
    if hline is not None and (not log_y or hline > 0):
        ys.append(math.log10(hline) if log_y else hline)
    if not xs or not ys:
        return [["top center"] * len(t[0]) for t in traces]
    (x0, x1), (y0, y1) = (min(xs), max(xs)), (min(ys), max(ys))
    dx, dy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    x0, x1, y0, y1 = x0 - 0.05 * dx, x1 + 0.05 * dx, y0 - 0.08 * dy, y1 + 0.08 * dy
    w, h = _PLOT_PX

    def px(x: float, y: float) -> tuple[float, float]:
        yy = math.log10(y) if log_y and y > 0 else (y0 if log_y else y)
        return (x - x0) / (x1 - x0) * w, (yy - y0) / (y1 - y0) * h

    marks = [px(x, y) for t in traces for x, y in zip(t[0], t[1])]
    lines = []
    for tx, ty, _, is_line in traces:
        pts = [px(x, y) for x, y in zip(tx, ty)]
        for (ax, ay), (bx, by) in zip(pts, pts[1:]) if is_line else ():
            n = max(1, int(math.hypot(bx - ax, by - ay) / 4))
            lines += [(ax + (bx - ax) * i / n, ay + (by - ay) * i / n) for i in range(n + 1)]
    dashed = [(i * 4.0, px(x0, hline)[1]) for i in range(int(w / 4) + 1)] if hline is not None else []
    placed: list[tuple[float, float, float, float]] = []

    def box(cx: float, cy: float, text: str, pos: str) -> tuple[float, float, float, float]:
        tw, th, gap = 7.0 * len(text) + 2, 14.0, 6.0
        vert, hor = pos.split()
        left = {"center": cx - tw / 2, "right": cx + gap / 2, "left": cx - gap / 2 - tw}[hor]
        if vert == "middle":
            left = cx + gap + 2 if hor == "right" else cx - gap - 2 - tw
        bottom = {"top": cy + gap, "bottom": cy - gap - th, "middle": cy - th / 2}[vert]
        return left, bottom, left + tw, bottom + th

    def inside(b: tuple[float, float, float, float], x: float, y: float, pad: float) -> bool:
        return b[0] - pad <= x <= b[2] + pad and b[1] - pad <= y <= b[3] + pad

    def cost(b: tuple[float, float, float, float]) -> float:
        labels = sum(b[0] < c[2] + 4 and c[0] < b[2] + 4 and b[1] < c[3] + 2 and c[1] < b[3] + 2 for c in placed)
        return (10 * labels + 5 * sum(inside(b, x, y, 5) for x, y in marks)
                + 0.3 * sum(inside(b, x, y, 1) for x, y in lines) + 0.1 * sum(inside(b, x, y, 0) for x, y in dashed)
                + 3 * (b[0] < 0 or b[2] > w or b[1] < 0 or b[3] > h))

    out = []
    for tx, ty, texts, _ in traces:
        chosen = []
        for x, y, text in zip(tx, ty, texts):
            cx, cy = px(x, y)
            best = min(_POSITIONS, key=lambda pos: cost(box(cx, cy, text, pos)))  # first of the cheapest
            placed.append(box(cx, cy, text, best))
            chosen.append(best)
        out.append(chosen)
    return out


def _log_ticks(values: list[float]) -> list[float]:
    """1-2-5 ticks spanning positive ``values`` (a log axis labels them in full, not as bare digits)."""
    pos = [v for v in values if v > 0]
    if not pos:
        return []
    lo, hi = min(pos), max(pos)
    ticks = [m * 10.0**k for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)]
    return [t for t in ticks if lo / 1.6 <= t <= hi * 1.6]


def _rows(rows: object) -> tuple[list[FamilyRow], list[tuple[str, str, str]]]:
    if isinstance(rows, FamilyPoints):
        return list(rows.rows), list(rows.skipped)
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise ValueError("rows must be FamilyPoints or a list of FamilyRows "
                         f"(sparsekit.structured.equal_cost.family_points), got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, FamilyRow):
            raise ValueError(f"rows[{i}] must be a FamilyRow (sparsekit.structured.equal_cost.family_points), got "
                             f"{type(row).__name__}")
    return list(rows), []


def family_cost_figure(rows: FamilyPoints | Sequence[FamilyRow], metric: str, *, x: str = "params",
                       metric_label: str | None = None, higher_is_better: bool = True,
                       log_y: bool = False) -> go.Figure:
    """Quality against kept parameters (or stored bytes) for each family of structure, one colour per family.

    Args:
        rows: ``family_points``' result or its rows; the ``dense`` row is drawn as a grey star and a dashed line.
        metric: the quality metric on the y axis (a key of the rows' ``quality``).
        x: ``"params"`` (kept parameters of the whole model) or ``"bytes"`` (stored bytes, MB).
        metric_label: y-axis title (default: the metric key).
        higher_is_better: shown in the axis title.
        log_y: a log y axis (perplexities that span orders of magnitude).

    Returns:
        A figure with one trace per family (``meta`` = the family, colour ``FAMILY_COLORS``), points sorted by x
        and labelled with their setting; families skipped by ``family_points`` are named in the subtitle.

    Raises:
        ValueError: rows that are not ``FamilyRow``s, an unknown ``x``, or a metric no row has.
    """
    pts, skipped = _rows(rows)
    if x not in X_AXES:
        raise ValueError(f"x must be 'params' or 'bytes', got {x!r}")
    title = f"{metric_label or metric} vs {'kept parameters' if x == 'params' else 'stored bytes'}"
    if not pts:
        return _empty(title, "no rows")
    known = sorted({k for r in pts for k in r.quality})
    if metric not in known:
        raise ValueError(f"no row has the metric {metric!r}; the rows have {known}")

    def xval(r: FamilyRow) -> float:
        return float(r.kept_params) if x == "params" else r.stored_bytes / _BYTES_PER_MB

    fig = go.Figure()
    families = [f for f in FAMILIES if any(r.family == f for r in pts)]
    families += list(dict.fromkeys(r.family for r in pts if r.family not in families))
    drawn = [(f, sel) for f in families
             if (sel := sorted((r for r in pts if r.family == f and r.quality.get(metric) is not None), key=xval))]
    hline = next((float(sel[0].quality[metric]) for f, sel in drawn if f == "dense"), None)
    texts = [["dense" if f == "dense" else r.setting for r in sel] for f, sel in drawn]
    positions = _label_positions([([xval(r) for r in sel], [float(r.quality[metric]) for r in sel], t,
                                   f != "dense" and len(sel) > 1) for (f, sel), t in zip(drawn, texts)], hline, log_y)
    for (family, sel), text, where in zip(drawn, texts, positions):
        color = FAMILY_COLORS.get(family, "#444444")
        dense = family == "dense"
        if dense:
            fig.add_hline(y=float(sel[0].quality[metric]), line=dict(color=color, dash="dash", width=1))
        fig.add_trace(go.Scatter(
            x=[xval(r) for r in sel], y=[float(r.quality[metric]) for r in sel], name=family, meta=family,
            mode="markers+text" if dense or len(sel) == 1 else "lines+markers+text",
            text=text, textposition=where,
            marker=dict(color=color, size=14 if dense else 9, symbol="star" if dense else "circle"),
            line=dict(color=color),
            customdata=[[r.setting, r.kept_share, r.stored_bytes] for r in sel],
            hovertemplate=(f"{family} %{{customdata[0]}}<br>kept %{{customdata[1]:.1%}} of the dense parameters"
                           f"<br>%{{customdata[2]:,}} bytes<br>{metric} %{{y:.4g}}<extra></extra>"),
        ))
    direction = "higher is better" if higher_is_better else "lower is better"
    gone = sorted({f for f, s, _ in skipped if s == "all"} | {f"{f} {s}" for f, s, _ in skipped if s != "all"})
    subtitle = "every family counted the same way" + (f" · not applicable: {', '.join(gone)}" if gone else "")
    fig.update_layout(title=dict(text=f"{title}<br><sup>{subtitle}</sup>"), height=480, margin=dict(b=110),
                      legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0, title_text="family"))
    fig.update_xaxes(title_text=X_AXES[x])
    fig.update_yaxes(title_text=f"{metric_label or metric} ({direction})", type="log" if log_y else None)
    ticks = _log_ticks([float(r.quality[metric]) for _, sel in drawn for r in sel]) if log_y else []
    if len(ticks) >= 2:
        fig.update_yaxes(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    return fig


__all__ = ["X_AXES", "family_cost_figure"]
