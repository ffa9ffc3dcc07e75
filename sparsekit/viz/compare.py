"""Method comparison figure (``sparsekit.compare``): quality against sparsity or weight memory."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from ._style import _BYTES_PER_MB, _empty

METHOD_COLORS = {
    "dense": "#000000", "magnitude": "#1f77b4", "wanda": "#2ca02c", "sparsegpt": "#d62728",
    "taylor": "#9467bd", "random": "#7f7f7f", "magnitude+perm": "#17becf",
}
_FAMILY_SYMBOLS = {"N:M": "diamond", "unstructured": "circle", "dense": "star"}


def _check_rows(rows: Any, required: Sequence[str], what: str) -> list[Mapping]:
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
        raise ValueError(f"{what} must be a list of dicts, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"{what}[{i}] must be a dict, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"{what}[{i}] is missing key(s) {', '.join(map(repr, missing))}")
    return list(rows)


def compare_figure(rows: Sequence[Mapping], metric: str, *, x: str = "sparsity", metric_label: str | None = None,
                   higher_is_better: bool = True) -> go.Figure:
    """Quality against sparsity (or weight memory) for each pruning method.

    Args:
        rows: comparison rows (``sparsekit.compare.compare``): ``method``, ``family``, ``pattern``,
            ``sparsity``, ``best_bytes`` and ``quality`` (metric -> value); a ``dense`` row is drawn as a
            dashed reference line.
        metric: which quality metric to plot.
        x: ``"sparsity"`` (pruned share of all Linear/Conv weights) or ``"memory"`` (their weight
            memory in MB, each layer in its cheapest format).
        metric_label: y-axis title (default: the metric key).
        higher_is_better: shown in the axis title.

    Returns:
        A figure with one trace per method and pattern family: unstructured settings as a line,
        N:M settings as diamonds labelled with their pattern.
    """
    rows = _check_rows(rows, ("method", "family", "pattern", "sparsity", "best_bytes", "quality"), "rows")
    if x not in ("sparsity", "memory"):
        raise ValueError(f"x must be 'sparsity' or 'memory', got {x!r}")
    title = f"{metric_label or metric} vs {'sparsity' if x == 'sparsity' else 'weight memory'}"
    pts = [r for r in rows if metric in r["quality"] and r["quality"][metric] is not None]
    if not pts:
        return _empty(title, f"no results for {metric!r}")

    def xval(r: Mapping) -> float:
        return float(r["sparsity"]) if x == "sparsity" else float(r["best_bytes"]) / _BYTES_PER_MB

    fig = go.Figure()
    for r in pts:
        if r["method"] == "dense":
            fig.add_hline(y=float(r["quality"][metric]), line=dict(color="black", dash="dash", width=1),
                          annotation_text="dense", annotation_position="bottom left")
    methods = list(dict.fromkeys(r["method"] for r in pts if r["method"] != "dense"))
    for method in methods:
        color = METHOD_COLORS.get(method)
        for family in ("unstructured", "N:M"):
            sel = sorted((r for r in pts if r["method"] == method and r["family"] == family), key=xval)
            if not sel:
                continue
            fig.add_trace(go.Scatter(
                x=[xval(r) for r in sel], y=[float(r["quality"][metric]) for r in sel],
                mode="lines+markers" if family == "unstructured" else "markers+text",
                text=[str(r["pattern"]) if family == "N:M" else "" for r in sel], textposition="top center",
                name=f"{method} ({family})", legendgroup=method,
                marker=dict(symbol=_FAMILY_SYMBOLS[family], size=10 if family == "N:M" else 8, color=color),
                line=dict(color=color),
                customdata=[str(r["pattern"]) for r in sel],
                hovertemplate="%{customdata} " + method + "<br>x %{x:.3g}<br>" + metric + " %{y:.4g}<extra></extra>",
            ))
    direction = "higher is better" if higher_is_better else "lower is better"
    fig.update_layout(title=title, legend_title_text="method (pattern family)")
    fig.update_xaxes(title_text="pruned share of Linear/Conv weights" if x == "sparsity"
                     else "Linear/Conv weight memory, best format per layer (MB)",
                     tickformat=".0%" if x == "sparsity" else None)
    fig.update_yaxes(title_text=f"{metric_label or metric} ({direction})")
    return fig
