"""KV-cache sparsity figure (``sparsekit.kvcache.kv_sweep``): quality against the cache's bytes."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..stats import mean_interval
from ._style import METHOD_COLORS, RUN_COLORS, _empty, shade

KV_METHOD_STYLES: dict[str, tuple[str, str]] = {
    "mustafar-token": (RUN_COLORS[0], "solid"),
    "mustafar-token-output": (shade(RUN_COLORS[0], -0.45), "dash"),
    "mustafar-channel": (RUN_COLORS[1], "solid"),
    "mustafar-channel-output": (shade(RUN_COLORS[1], -0.45), "dash"),
    "streaming": (RUN_COLORS[2], "solid"),
    "h2o": (RUN_COLORS[3], "solid"),
}
"""Colour and line of each ``kv_sweep`` method: Mustafar magnitude in blue (per token) and orange (per
channel), its output-aware variants in a darker shade of the same hue and dashed; the eviction baselines
green (StreamingLLM) and red (H2O). Dense is the project's mid-grey."""
_REQUIRED = ("method", "sparsity", "text", "perplexity", "dense_perplexity", "agreement", "bytes", "bytes_dense")


def _check(rows: object) -> list[Mapping[str, Any]]:
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise ValueError(f"rows must be the list kv_sweep returns, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"rows[{i}] must be a dict from kv_sweep, got {type(row).__name__}")
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise ValueError(f"rows[{i}] lacks {', '.join(missing)} (rows come from sparsekit.kvcache.kv_sweep)")
    return list(rows)


def _span(values: list[float]) -> tuple[float, float, float]:
    """Mean and the distances to the ends of its 95 % interval (0 with one value)."""
    iv = mean_interval(values)
    if math.isnan(iv.low):
        return iv.mean, 0.0, 0.0
    return iv.mean, iv.high - iv.mean, iv.mean - iv.low


def kv_quality_bytes_figure(rows: Sequence[Mapping[str, Any]], *, title: str = "") -> go.Figure:
    """Perplexity and next-token agreement against the cache's bytes, one line per method through its
    sparsities, the dense cache marked.

    Args:
        rows: ``sparsekit.kvcache.kv_sweep`` rows. Points are means over the texts of a (method, sparsity) cell,
            with 95 % Student-t intervals over texts as error bars; x is the mean ``bytes`` (the method's own
            compressed layout: Mustafar's bitmap + kept values, the kept tokens stored dense for eviction).
        title: figure title (default names the texts and tokens).

    Returns:
        A two-panel ``go.Figure`` (perplexity left, agreement right).
    """
    rows = _check(rows)
    heading = title or "KV cache: quality against cache bytes"
    if not rows:
        return _empty(heading, "no KV sweep results to plot")
    texts = sorted({int(r["text"]) for r in rows})
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("perplexity (lower is better)", "next-token agreement with dense"))
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    for method in methods:
        color, dash = KV_METHOD_STYLES.get(method, (RUN_COLORS[(len(KV_METHOD_STYLES) + methods.index(method))
                                                               % len(RUN_COLORS)], "dot"))
        cells = sorted({float(r["sparsity"]) for r in rows if r["method"] == method})
        xs, ppl, agree, labels = [], [], [], []
        for s in cells:
            cell = [r for r in rows if r["method"] == method and float(r["sparsity"]) == s]
            xs.append(sum(float(r["bytes"]) for r in cell) / len(cell))
            ppl.append(_span([float(r["perplexity"]) for r in cell]))
            agree.append(_span([float(r["agreement"]) for r in cell]))
            labels.append(f"{s:.0%}")
        for col, series, name in ((1, ppl, "perplexity"), (2, agree, "agreement")):
            fig.add_trace(go.Scatter(
                x=xs, y=[m for m, _, _ in series], mode="lines+markers+text", text=labels,
                textposition="top center", textfont=dict(size=9, color=color), name=method,
                legendgroup=method, showlegend=col == 1, line=dict(color=color, dash=dash),
                error_y=dict(type="data", symmetric=False, array=[u for _, u, _ in series],
                             arrayminus=[lo for _, _, lo in series], thickness=1, width=3),
                customdata=[[lab, len(texts)] for lab in labels],
                hovertemplate=(f"{method}, sparsity %{{customdata[0]}}<br>cache %{{x:,.0f}} bytes<br>{name} "
                               "%{y:.4g} (mean of %{customdata[1]} texts)<extra></extra>")), row=1, col=col)
    dense_bytes = sum(float(r["bytes_dense"]) for r in rows) / len(rows)
    per_text = {int(r["text"]): float(r["dense_perplexity"]) for r in rows}
    dense_ppl, up, lo = _span(list(per_text.values()))
    grey = METHOD_COLORS["dense"]
    for col, (y, err_up, err_lo) in ((1, (dense_ppl, up, lo)), (2, (1.0, 0.0, 0.0))):
        fig.add_trace(go.Scatter(
            x=[dense_bytes], y=[y], mode="markers", name="dense cache", legendgroup="dense", showlegend=col == 1,
            marker=dict(color=grey, symbol="star", size=12),
            error_y=dict(type="data", symmetric=False, array=[err_up], arrayminus=[err_lo], thickness=1, width=3),
            hovertemplate="dense cache %{x:,.0f} bytes<br>%{y:.4g}<extra></extra>"), row=1, col=col)
        fig.add_vline(x=dense_bytes, line=dict(color=grey, dash="dot", width=1), row=1, col=col)
    for col in (1, 2):
        fig.update_xaxes(title_text="cache bytes at the end of a text (compressed layout, fp16 values)",
                         tickformat="~s", ticksuffix=" B", row=1, col=col)
    fig.update_yaxes(title_text="perplexity", row=1, col=1)
    fig.update_yaxes(title_text="agreement (fraction of positions)", tickformat=".0%", row=1, col=2)
    tokens = sorted({int(r["tokens"]) for r in rows if "tokens" in r})
    sub = f"{len(texts)} texts" + (f" of {tokens[0]} tokens" if len(tokens) == 1 else "")
    fig.update_layout(title=f"{heading}<br><sup>{sub}; mean and 95 % interval over texts; labels = sparsity</sup>",
                      legend=dict(orientation="h", yanchor="top", y=-0.2), margin=dict(t=90))
    return fig


__all__ = ["KV_METHOD_STYLES", "kv_quality_bytes_figure"]
