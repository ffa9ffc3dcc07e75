"""Method comparison figure (``sparsekit.compare``): quality against sparsity or weight memory."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import plotly.graph_objects as go

from ..evaluate import CompareRow
from ._style import _BYTES_PER_MB, METHOD_COLORS, _empty, method_color

NM_SYMBOLS = (("diamond", "◆"), ("square", "■"), ("triangle-up", "▲"), ("cross", "✚"), ("x", "✖"),
              ("pentagon", "⬟"), ("hexagon", "⬢"), ("star", "★"))
"""Marker symbols of the N:M patterns in the order they first appear, with the character that
names them in the subtitle."""
LABEL_POSITIONS = ("top center", "bottom center", "middle right", "middle left", "top right", "bottom right",
                   "top left", "bottom left")
"""Text positions handed out to the pattern labels that share an x value, so they do not pile up."""


def _check_rows(rows: object, what: str) -> list[CompareRow]:
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise ValueError(f"{what} must be a list of CompareRows (sparsekit.compare), got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, CompareRow):
            raise ValueError(f"{what}[{i}] must be a CompareRow (sparsekit.compare), got {type(row).__name__}")
    return list(rows)


def compare_figure(rows: Sequence[CompareRow], metric: str, *, x: str = "sparsity", metric_label: str | None = None,
                   higher_is_better: bool = True) -> go.Figure:
    """Quality against sparsity (or weight memory) for each pruning method.

    Args:
        rows: comparison rows (``sparsekit.compare.compare``; their ``method``, ``family``, ``pattern``,
            ``sparsity``, ``best_bytes`` and ``quality`` are drawn); a ``dense`` row is drawn as a dashed
            reference line.
        metric: which quality metric to plot.
        x: ``"sparsity"`` (pruned share of all Linear/Conv weights) or ``"memory"`` (their weight
            memory in MB, each layer in its cheapest format).
        metric_label: y-axis title (default: the metric key).
        higher_is_better: shown in the axis title.

    Returns:
        A figure with one trace per method and pattern family (``legendgroup`` = method, ``meta`` =
        family; one legend entry per method): unstructured settings as a line, N:M settings as
        markers whose symbol names the pattern (key in the subtitle). A last text-only trace
        (``meta`` = ``"labels"``) names each N:M pattern once per x value, labels that share an x
        in different text positions. The legend runs horizontally below the plot.
    """
    rows = _check_rows(rows, "rows")
    if x not in ("sparsity", "memory"):
        raise ValueError(f"x must be 'sparsity' or 'memory', got {x!r}")
    title = f"{metric_label or metric} vs {'sparsity' if x == 'sparsity' else 'weight memory'}"
    pts = [r for r in rows if r.quality.get(metric) is not None]
    if not pts:
        return _empty(title, f"no results for {metric!r}")

    def xval(r: CompareRow) -> float:
        return float(r.sparsity) if x == "sparsity" else float(r.best_bytes) / _BYTES_PER_MB

    fig = go.Figure()
    for r in pts:
        if r.method == "dense":
            # Named outside the plot, right of its line: inside, the N:M labels at the same
            # quality (2:4 at 50 %) printed over it.
            fig.add_hline(y=float(r.quality[metric]), line=dict(color=METHOD_COLORS["dense"], dash="dash", width=1))
            fig.add_annotation(text="dense", xref="paper", x=1.0, xanchor="left", y=float(r.quality[metric]),
                               yref="y", showarrow=False, font=dict(color=METHOD_COLORS["dense"]))
    nm_patterns = list(dict.fromkeys(str(r.pattern) for r in pts if r.family == "N:M"))
    symbol = {p: NM_SYMBOLS[i % len(NM_SYMBOLS)] for i, p in enumerate(nm_patterns)}
    methods = list(dict.fromkeys(r.method for r in pts if r.method != "dense"))
    for method in methods:
        color = method_color(method)
        shown = False
        for family in ("unstructured", "N:M"):
            sel = sorted((r for r in pts if r.method == method and r.family == family), key=xval)
            if not sel:
                continue
            nm = family == "N:M"
            fig.add_trace(go.Scatter(
                x=[xval(r) for r in sel], y=[float(r.quality[metric]) for r in sel],
                mode="markers" if nm else "lines+markers", name=method, legendgroup=method, meta=family,
                showlegend=not shown,
                marker=dict(symbol=[symbol[str(r.pattern)][0] for r in sel] if nm else "circle",
                            size=11 if nm else 8, color=color),
                line=dict(color=color),
                customdata=[str(r.pattern) for r in sel],
                hovertemplate="%{customdata} " + method + "<br>x %{x:.3g}<br>" + metric + " %{y:.4g}<extra></extra>",
            ))
            shown = True
    if nm_patterns:
        fig.add_trace(_pattern_labels([r for r in pts if r.family == "N:M"], xval, metric))
    direction = "higher is better" if higher_is_better else "lower is better"
    key = " · ".join(f"{symbol[p][1]} {p}" for p in nm_patterns)
    subtitle = "unstructured: ● on a line" + (f" · N:M: {key}" if key else "")
    fig.update_layout(
        title=dict(text=f"{title}<br><sup>{subtitle}</sup>"),
        legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0, title_text="method"),
        margin=dict(b=110, r=60),
        height=480,
    )
    fig.update_xaxes(title_text="pruned share of Linear/Conv weights" if x == "sparsity"
                     else "Linear/Conv weight memory, best format per layer (MB)",
                     tickformat=".0%" if x == "sparsity" else None)
    fig.update_yaxes(title_text=f"{metric_label or metric} ({direction})")
    return fig


def _pattern_labels(nm_rows: Sequence[CompareRow], xval: Callable[[CompareRow], float], metric: str) -> go.Scatter:
    # One label per pattern and x (not one per method), each x's labels in different positions:
    # the highest cluster above its top point, the next below its bottom point, then to the sides.
    clusters: dict[tuple[float, str], list[float]] = {}
    for r in nm_rows:
        clusters.setdefault((round(xval(r), 9), str(r.pattern)), []).append(float(r.quality[metric]))
    by_x: dict[float, list[tuple[str, list[float]]]] = {}
    for (xv, pattern), ys in clusters.items():
        by_x.setdefault(xv, []).append((pattern, ys))
    xs, ys, texts, positions = [], [], [], []
    for xv, items in by_x.items():
        items.sort(key=lambda item: -sum(item[1]) / len(item[1]))
        for i, (pattern, values) in enumerate(items):
            pos = LABEL_POSITIONS[i % len(LABEL_POSITIONS)]
            xs.append(xv)
            ys.append(max(values) if pos.startswith("top") else min(values) if pos.startswith("bottom")
                      else sum(values) / len(values))
            texts.append(pattern)
            positions.append(pos)
    return go.Scatter(x=xs, y=ys, text=texts, textposition=positions, mode="text", meta="labels",
                      name="N:M patterns", showlegend=False, hoverinfo="skip", textfont=dict(size=11))
