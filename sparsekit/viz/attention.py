"""Attention sparsity figures (``sparsekit.attention``): a head's attention with a pattern drawn over
it, layer × head grids (recall, density, error; a clickable one for picking a head), and the per-head
search's plan and trade-off."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
import torch

from ._style import KEPT_COLOR, PRUNED_COLOR, _percent

if TYPE_CHECKING:
    from ..attention.capture import AttentionCapture
    from ..attention.metrics import HeadMetrics
    from ..attention.search import SearchResult

ATTENTION_FAMILY_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
)
LABEL_ALL_TOKENS = 48
"""Attention maps of at most this many tokens label every query and key (longer ones let plotly thin them)."""
CURRENT_HEAD_COLOR = "#d62728"


def _attn_matrix(values: Any, what: str, ndim: int = 2) -> np.ndarray:
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if arr.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {list(arr.shape)}")
    return arr


def _token_axis(tokens: Sequence[str], n: int) -> list[str]:
    # Numbered labels keep repeated tokens ("the" twice) apart on a categorical axis.
    if len(tokens) != n:
        raise ValueError(f"{len(tokens)} token labels for {n} positions")
    return [f"{i} {t}" for i, t in enumerate(tokens)]


def attention_heatmap(probs: Any, tokens: Sequence[str], mask: Any = None, *, title: str | None = None) -> go.Figure:
    """One head's attention with token labels, the pattern drawn over it (dropped cells greyed).

    Args:
        probs: attention ``[queries, keys]`` (rows sum to 1).
        tokens: one label per position (queries and keys are the same sequence).
        mask: optional bool ``[queries, keys]`` pattern, True = kept.
        title: figure title.

    Returns:
        ``data[0]``: Heatmap of the probabilities (``x`` keys, ``y`` queries, labels
        ``"<position> <token>"``); ``data[1]`` (with a mask): Heatmap of the dropped cells (1 where
        dropped, None where kept) drawn half-transparent grey on top. Cells are square (the y axis
        is scale-anchored to x) and up to ``LABEL_ALL_TOKENS`` tokens every one is labelled.

    Raises:
        ValueError: shapes that do not match.
    """
    p = _attn_matrix(probs, "probs").astype(np.float32)
    q_len, kv_len = p.shape
    if q_len != kv_len:
        raise ValueError(f"self-attention maps are square; got {q_len}×{kv_len}")
    labels = _token_axis(tokens, kv_len)
    fig = go.Figure(go.Heatmap(
        z=p, x=labels, y=labels, colorscale="Blues", zmin=0.0, zmax=float(p.max()) if p.size else 1.0,
        colorbar=dict(title=dict(text="attention")),
        hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.4f}<extra></extra>",
    ))
    if mask is not None:
        m = _attn_matrix(mask, "mask").astype(bool)
        if m.shape != p.shape:
            raise ValueError(f"mask shape {list(m.shape)} differs from the attention's {list(p.shape)}")
        dropped = np.where(m, np.nan, 1.0).astype(np.float32)
        fig.add_trace(go.Heatmap(
            z=dropped, x=labels, y=labels, colorscale=[[0, PRUNED_COLOR], [1, PRUNED_COLOR]], opacity=0.75,
            showscale=False, zmin=0, zmax=1, name="dropped by the pattern",
            hovertemplate="query %{y}<br>key %{x}<br>dropped by the pattern<extra></extra>",
        ))
    if title is None:
        title = "attention" if mask is None else f"attention, pattern keeps {_percent(float(np.mean(m)))} of the cells"
    every = q_len <= LABEL_ALL_TOKENS
    # Rows get enough pixels for a readable label each when every token is labelled.
    fig.update_layout(title=title, height=min(900, 300 + (16 if every else 9) * q_len))
    ticks = dict(tickmode="array", tickvals=labels, ticktext=labels, tickfont=dict(size=10)) if every else {}
    fig.update_xaxes(title_text="key", type="category", tickangle=-60, showgrid=False, constrain="domain", **ticks)
    # One query row is as tall as one key column is wide: a square map stays square at any page width.
    fig.update_yaxes(title_text="query", type="category", autorange="reversed", showgrid=False, scaleanchor="x",
                     scaleratio=1, constrain="domain", **ticks)
    return fig


def head_grid_figure(values: Any, *, title: str, colorbar: str, zmin: float = 0.0, zmax: float | None = 1.0,
                     text_format: str = ".2f", colorscale: str = "Viridis") -> go.Figure:
    """A layer × head grid of one number per head (recall, density, output error).

    Args:
        values: ``[layers, heads]``.
        title: figure title.
        colorbar: colour bar label.
        zmin: colour scale minimum.
        zmax: colour scale maximum (None: the data's maximum).
        text_format: d3 format of the number written in each cell.
        colorscale: plotly colour scale.

    Returns:
        A figure with one Heatmap: ``z[layer][head]``, ``x`` head indices, ``y`` layer indices
        (layer 0 at the top).
    """
    v = _attn_matrix(values, "values").astype(np.float32)
    n_layers, n_heads = v.shape
    fig = go.Figure(go.Heatmap(
        z=v, x=list(range(n_heads)), y=list(range(n_layers)), zmin=zmin,
        zmax=float(np.nanmax(v)) if zmax is None and v.size else zmax, colorscale=colorscale,
        texttemplate=f"%{{z:{text_format}}}", colorbar=dict(title=dict(text=colorbar)),
        hovertemplate=f"layer %{{y}}, head %{{x}}<br>{colorbar}: %{{z:.4f}}<extra></extra>",
    ))
    fig.update_layout(title=title, height=max(260, 120 + 36 * n_layers))
    fig.update_xaxes(title_text="head", dtick=1)
    fig.update_yaxes(title_text="layer", dtick=1, autorange="reversed")
    return fig


def head_picker_figure(kept: Any, current: tuple[int, int], *, title: str) -> go.Figure:
    """A layer × head grid of the attention mass a pattern keeps, made for picking a head with a
    click: the current head is outlined, hovering a cell shows the mass the pattern loses there.

    Plotly heatmaps give no click selection, so a transparent marker sits on every cell centre;
    with ``hoverdistance=-1`` the nearest marker, i.e. the cell under the pointer, answers hover
    and click.

    Args:
        kept: ``[layers, heads]`` mass kept per head (attention recall, 0..1).
        current: ``(layer, head)`` shown now.
        title: figure title.

    Returns:
        ``data[0]``: Heatmap of ``kept`` (``z[layer][head]``, no hover); ``data[1]``: Scatter with
        one point per cell, in row-major order (``x`` head, ``y`` layer, ``customdata`` ``[kept,
        lost]`` with lost = 1 − kept); ``layout.shapes[0]``: the rectangle around ``current``.

    Raises:
        ValueError: ``kept`` not 2-D or ``current`` outside the grid.
    """
    v = _attn_matrix(kept, "kept mass").astype(np.float64)
    n_layers, n_heads = v.shape
    layer, head = current
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise ValueError(f"head ({layer}, {head}) is outside the {n_layers} × {n_heads} grid")
    cells = [(li, hi) for li in range(n_layers) for hi in range(n_heads)]
    fig = go.Figure([
        go.Heatmap(z=v, x=list(range(n_heads)), y=list(range(n_layers)), zmin=0.0, zmax=1.0, colorscale="Viridis",
                   texttemplate="%{z:.2f}", colorbar=dict(title=dict(text="mass kept")), hoverinfo="skip"),
        go.Scatter(x=[hi for _, hi in cells], y=[li for li, _ in cells], mode="markers", showlegend=False,
                   marker=dict(size=18, symbol="square", color="rgba(0,0,0,0)"),
                   customdata=[[v[li, hi], 1.0 - v[li, hi]] for li, hi in cells],
                   hovertemplate="layer %{y}, head %{x}<br>mass kept %{customdata[0]:.4f}<br>"
                                 "<b>mass lost %{customdata[1]:.4f}</b><extra>click to show this head</extra>"),
    ])
    fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                  line=dict(color=CURRENT_HEAD_COLOR, width=4), fillcolor="rgba(0,0,0,0)")
    fig.update_layout(title=title, height=max(260, 120 + 36 * n_layers), hovermode="closest", hoverdistance=-1)
    fig.update_xaxes(title_text="head", dtick=1, range=[-0.5, n_heads - 0.5], showgrid=False, zeroline=False)
    fig.update_yaxes(title_text="layer", dtick=1, range=[n_layers - 0.5, -0.5], showgrid=False, zeroline=False)
    return fig


def plan_grid_figure(result: SearchResult, *, title: str = "per-head plan") -> go.Figure:
    """The per-head plan of a search: each cell coloured by the chosen pattern family, hover with
    the exact pattern, its recall and density on the calibration inputs.

    Args:
        result: a per-head search (``sparsekit.attention.search.SearchResult``).
        title: figure title.

    Returns:
        A figure with one Heatmap whose ``z`` is the family index + 0.5 (``customdata`` holds
        the label, recall and density of each cell, ``text`` the recall) and one legend entry
        (an empty Scatter) per family, in order of first appearance.
    """
    chosen = [[result.candidates[int(c)] for c in row] for row in result.choice]
    r = _attn_matrix(result.plan_recall, "recall").astype(np.float64)
    d = _attn_matrix(result.plan_density, "density").astype(np.float64)
    n_layers, n_heads = r.shape
    names = list(dict.fromkeys(spec.name for row in chosen for spec in row))
    index = {f: i for i, f in enumerate(names)}
    z = np.array([[index[spec.name] for spec in row] for row in chosen], dtype=np.float32)
    colors = [ATTENTION_FAMILY_COLORS[i % len(ATTENTION_FAMILY_COLORS)] for i in range(len(names))]
    k = max(len(names), 1)
    # A stepped colour scale: family i owns the band [i/k, (i+1)/k].
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / k, c], [(i + 1) / k, c]]
    custom = np.empty((n_layers, n_heads, 3), dtype=object)
    for layer in range(n_layers):
        for head in range(n_heads):
            custom[layer, head] = (chosen[layer][head].label, f"{r[layer, head]:.3f}", f"{d[layer, head]:.3f}")
    text = [[f"{r[layer, head]:.2f}" for head in range(n_heads)] for layer in range(n_layers)]
    fig = go.Figure(go.Heatmap(
        # +0.5 centres each family's index inside its colour band.
        z=z + 0.5, x=list(range(n_heads)), y=list(range(n_layers)), zmin=0, zmax=k,
        colorscale=scale if scale else "Greys", showscale=False, customdata=custom, text=text,
        texttemplate="%{text}",
        hovertemplate="layer %{y}, head %{x}<br>%{customdata[0]}<br>recall %{customdata[1]}, "
                      "density %{customdata[2]}<extra></extra>",
    ))
    for name, color in zip(names, colors):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", marker=dict(size=12, color=color, symbol="square"),
                                 name=name, showlegend=True))
    fig.update_layout(title=title, height=max(280, 140 + 36 * n_layers), legend=dict(title=dict(text="pattern")))
    fig.update_xaxes(title_text="head", dtick=1)
    fig.update_yaxes(title_text="layer", dtick=1, autorange="reversed")
    return fig


def search_tradeoff_figure(result: SearchResult) -> go.Figure:
    """Mean density vs mean recall of every searched candidate used uniformly, with the per-head
    plan and the chosen uniform baseline marked.

    Args:
        result: a per-head search (``sparsekit.attention.search.SearchResult``); every number is
            a mean over heads on its calibration inputs.

    Returns:
        ``data[0]`` the candidates, ``data[1]`` the plan, ``data[2]`` the uniform baseline.
    """
    summary = result.summary()
    fig = go.Figure([
        go.Scatter(x=[float(result.density[c].mean()) for c in range(len(result.candidates))],
                   y=[float(result.recall[c].mean()) for c in range(len(result.candidates))], mode="markers",
                   name="one pattern for every head", marker=dict(color=PRUNED_COLOR, size=7),
                   text=[spec.label for spec in result.candidates],
                   hovertemplate="%{text}<br>density %{x:.3f}, recall %{y:.3f}<extra></extra>"),
        go.Scatter(x=[summary["plan_density"]], y=[summary["plan_recall"]],
                   mode="markers", name="per-head plan", marker=dict(color="#d62728", size=14, symbol="star"),
                   hovertemplate="per-head plan<br>density %{x:.3f}, recall %{y:.3f}<extra></extra>"),
        go.Scatter(x=[summary["uniform_density"]], y=[summary["uniform_recall"]], mode="markers",
                   name=f"uniform: {summary['uniform']}", marker=dict(color=KEPT_COLOR, size=12, symbol="diamond"),
                   hovertemplate="uniform baseline<br>density %{x:.3f}, recall %{y:.3f}<extra></extra>"),
    ])
    fig.update_layout(title="recall vs density on the calibration inputs (means over heads)")
    fig.update_xaxes(title_text="density (share of attention pairs kept)", range=[0, 1.02])
    fig.update_yaxes(title_text="attention recall", range=[0, 1.02])
    return fig


def capture_figure(capture: AttentionCapture, *, layer: int = 0, head: int = 0) -> go.Figure:
    """One head of a captured input: ``attention_heatmap`` of ``capture.probs[layer, head]``.

    Raises:
        ValueError: a layer or head outside the capture.
    """
    if not 0 <= layer < capture.n_layers or not 0 <= head < capture.n_heads:
        raise ValueError(f"layer {layer}, head {head} is outside the capture ({capture.n_layers} layers x "
                         f"{capture.n_heads} heads)")
    return attention_heatmap(capture.probs[layer, head], capture.tokens,
                             title=f"layer {layer}, head {head} ({capture.model or 'attention'})")


def head_metrics_figure(metrics: HeadMetrics, *, value: str = "recall") -> go.Figure:
    """``head_grid_figure`` of one of a pattern's per-head metrics: ``recall``, ``density`` or ``error``."""
    grids = {"recall": (metrics.recall, "recall", 1.0), "density": (metrics.density, "density", 1.0),
             "error": (metrics.error, "relative output error", None)}
    if value not in grids:
        raise ValueError(f"value must be one of {sorted(grids)}, got {value!r}")
    grid, label, zmax = grids[value]
    return head_grid_figure(grid, title=f"{label} per head: {metrics.label}", colorbar=label, zmax=zmax)
