"""The equal-cost figure (``sparsekit.structured.equal_cost``): quality of every family of structure against
kept parameters of the whole model, or against stored bytes in each family's own format."""
from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from ..structured.equal_cost import FAMILIES, FamilyPoints, FamilyRow
from ._style import _BYTES_PER_MB, FAMILY_COLORS, _empty

X_AXES = {
    "params": "kept parameters, all of the model's (count; masked weights by their kept entries)",
    "bytes": "stored bytes in each family's format (MB; bitmap, N:M values + index bits, dense, Monarch factors)",
}
"""The two x views and their axis titles (with units)."""


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
    for family in families:
        sel = sorted((r for r in pts if r.family == family and r.quality.get(metric) is not None), key=xval)
        if not sel:
            continue
        color = FAMILY_COLORS.get(family, "#444444")
        dense = family == "dense"
        if dense:
            fig.add_hline(y=float(sel[0].quality[metric]), line=dict(color=color, dash="dash", width=1))
        fig.add_trace(go.Scatter(
            x=[xval(r) for r in sel], y=[float(r.quality[metric]) for r in sel], name=family, meta=family,
            mode="markers+text" if dense or len(sel) == 1 else "lines+markers+text",
            text=[r.setting if not dense else "dense" for r in sel], textposition="top center",
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
    return fig


__all__ = ["X_AXES", "family_cost_figure"]
