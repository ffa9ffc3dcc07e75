"""Figures of the Attention page's KV-cache view: one head's cached keys or values as a token × channel
heatmap (zeroed entries and evicted tokens grey, the dense window marked), and quality against cache bytes
over a study's groups (mean and interval over texts)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

from ._style import method_color
from .kvcache import KV_METHOD_STYLES

__all__ = ["kv_cache_heatmap", "kv_groups_figure", "pattern_label"]

ZERO_COLOR = "#d9d9d9"
"""Background showing through where an entry is zeroed (pruned) or its token evicted."""


def kv_cache_heatmap(values: Any, *, title: str, window: int, tokens: Sequence[str] | None = None,
                     colorbar: str = "value") -> go.Figure:
    """One head's cache ``[tokens, channels]``: kept entries coloured by value, zeros grey (NaN in ``z``).

    Args:
        values: ``[tokens, D]`` (a tensor or array).
        title: figure title.
        window: the newest tokens kept dense; a box marks them (0: none).
        tokens: row labels (default the positions).
        colorbar: colour bar label.

    Returns:
        A figure with one Heatmap (``z[token][channel]``, NaN where the entry is 0) and, when ``window``
        is above 0, one rectangle shape over the window's rows.
    """
    x = np.asarray(values.detach().cpu().float() if hasattr(values, "detach") else values, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"values must be [tokens, channels], got shape {x.shape}")
    n, d = x.shape
    z = np.where(x == 0, np.nan, x)
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    labels = list(tokens) if tokens is not None else [str(i) for i in range(n)]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(d)), y=list(range(n)), customdata=np.array(labels, dtype=object)[:, None].repeat(d, 1),
        zmin=-bound, zmax=bound, zmid=0.0, colorscale="RdBu", colorbar=dict(title=dict(text=colorbar)),
        hovertemplate="token %{y} (%{customdata}), channel %{x}<br>" + colorbar + ": %{z:.4f}<extra></extra>",
        hoverongaps=True,
    ))
    if window > 0:
        start = max(0, n - window)
        fig.add_shape(type="rect", x0=-0.5, x1=d - 0.5, y0=start - 0.5, y1=n - 0.5, line=dict(color="black", width=2),
                      fillcolor="rgba(0,0,0,0)")
        fig.add_annotation(x=d - 0.5, y=start - 0.5, text=f"dense window ({n - start})", showarrow=False,
                           xanchor="right", yanchor="bottom", font=dict(size=11), bgcolor="rgba(255,255,255,0.7)")
    fig.update_layout(title=title, plot_bgcolor=ZERO_COLOR, height=max(320, min(900, 80 + 4 * n)),
                      xaxis=dict(title="channel", showgrid=False), yaxis=dict(title="token", autorange="reversed",
                                                                          showgrid=False))
    return fig


def pattern_label(pattern: str) -> str:
    """``kv:0.5`` -> ``50%``; ``kv:0.7/0.3`` -> ``K70%/V30%`` (other text as it is)."""
    head, _, tail = pattern.partition(":")
    try:
        parts = [float(p) for p in tail.split("/")]
    except ValueError:
        return pattern
    if head != "kv" or not parts:
        return pattern
    return f"{parts[0]:.0%}" if len(parts) == 1 else f"K{parts[0]:.0%}/V{parts[1]:.0%}"


def kv_groups_figure(groups: Sequence[Any], *, metric: str, metric_label: str, dense_bytes: float | None = None,
                     title: str) -> go.Figure:
    """Quality against cache bytes, one line per method, a point per sparsity (``study.aggregate.Group``s of a
    KV study): the metric's mean with its interval over texts as error bars, bytes the mean over texts.

    Args:
        groups: the groups (``kind="kv"``), any order.
        metric: the metric on the y axis (``perplexity``, ``agreement`` ...).
        metric_label: its axis title.
        dense_bytes: the unpruned cache's bytes, drawn as a vertical line (None: no line).
        title: figure title.

    Returns:
        A figure with one Scatter per method (points sorted by bytes; the pattern in the hover text).
    """
    fig = go.Figure()
    methods = list(dict.fromkeys(g.method for g in groups))
    for method in methods:
        rows = sorted((g for g in groups if g.method == method and g.memory_bytes is not None),
                      key=lambda g: g.memory_bytes)
        if not rows:
            continue
        iv = [g.metrics[metric] for g in rows]
        mean = [i.mean for i in iv]
        plus = [0.0 if not np.isfinite(i.high) else i.high - i.mean for i in iv]
        minus = [0.0 if not np.isfinite(i.low) else i.mean - i.low for i in iv]
        color, dash = KV_METHOD_STYLES.get(method, (method_color(method), "dot"))
        fig.add_trace(go.Scatter(
            x=[g.memory_bytes for g in rows], y=mean, mode="lines+markers+text", name=method,
            line=dict(color=color, dash=dash), text=[pattern_label(g.pattern) for g in rows],
            textposition="top center", textfont=dict(size=9, color=color),
            error_y=dict(type="data", array=plus, arrayminus=minus, visible=True),
            hovertemplate="sparsity %{text}<br>cache %{x:,.0f} bytes<br>" + metric_label + " %{y:.4g}<extra>" + method
                          + "</extra>",
        ))
    if dense_bytes is not None:
        fig.add_vline(x=dense_bytes, line=dict(color="grey", dash="dot"), annotation_text="dense cache")
    fig.update_layout(title=title, yaxis_title=metric_label,
                      xaxis_title="cache bytes (Mustafar: bitmap + kept values; eviction: kept tokens dense)",
                      height=420, legend_title_text="method")
    return fig
