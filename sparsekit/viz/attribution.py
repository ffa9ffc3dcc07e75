"""Attribution drift figures (``sparsekit.attribution``): does the sparse model use the same evidence?"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ._style import KEPT_COLOR


def attribution_maps_figure(image: Any, dense_map: Any, sparse_map: Any, *, title: str = "Integrated Gradients",
                            correlation: float | None = None) -> go.Figure:
    """An input image and its dense and sparse attribution maps side by side.

    Args:
        image: ``[H, W]`` (or ``[1, H, W]``) input.
        dense_map: ``[H, W]`` attributions of the dense model.
        sparse_map: ``[H, W]`` attributions of the sparse model.
        title: figure title.
        correlation: shown in the title when given.

    Returns:
        Three heatmaps (``data[0]`` image, ``data[1]`` dense, ``data[2]`` sparse); both maps share one
        symmetric red-blue colour scale, so equal colours mean equal attributions.
    """
    img = np.asarray(torch.as_tensor(image).detach().float().squeeze().cpu(), dtype=np.float32)
    d = np.asarray(torch.as_tensor(dense_map).detach().float().squeeze().cpu(), dtype=np.float32)
    s = np.asarray(torch.as_tensor(sparse_map).detach().float().squeeze().cpu(), dtype=np.float32)
    if img.ndim != 2 or d.shape != img.shape or s.shape != img.shape:
        raise ValueError(f"image and maps must be 2-D of one shape, got {img.shape}, {d.shape}, {s.shape}")
    bound = float(max(np.abs(d).max(), np.abs(s).max(), 1e-12))
    fig = make_subplots(rows=1, cols=3, subplot_titles=("input", "dense model", "sparse model"),
                        horizontal_spacing=0.06)
    fig.add_trace(go.Heatmap(z=img, colorscale="Greys", showscale=False,
                             hovertemplate="row %{y}, col %{x}<br>pixel %{z:.2f}<extra></extra>"), 1, 1)
    for col, (z, name) in enumerate(((d, "dense"), (s, "sparse")), start=2):
        fig.add_trace(go.Heatmap(z=z, colorscale="RdBu", zmid=0, zmin=-bound, zmax=bound, showscale=col == 3,
                                 colorbar=dict(title="attribution"), name=name,
                                 hovertemplate="row %{y}, col %{x}<br>" + name + " %{z:.4f}<extra></extra>"), 1, col)
    for col in (1, 2, 3):
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{'' if col == 1 else col}", showticklabels=False,
                         row=1, col=col)
        fig.update_xaxes(showticklabels=False, row=1, col=col)
    suffix = f" (Pearson r = {correlation:.3f})" if correlation is not None and not math.isnan(correlation) else ""
    fig.update_layout(title=title + suffix, height=340)
    return fig


def token_attribution_figure(tokens: Sequence[str], dense: Any, sparse: Any, *,
                             title: str = "token attributions") -> go.Figure:
    """Grouped bars of per-token attributions, dense vs sparse.

    Args:
        tokens: the tokens, in order.
        dense: one value per token (dense model).
        sparse: one value per token (sparse model).
        title: figure title.

    Returns:
        A figure with ``data[0]`` dense and ``data[1]`` sparse bars; tokens keep their order (a
        repeated token gets its position appended).
    """
    d = [float(v) for v in torch.as_tensor(dense).reshape(-1).tolist()]
    s = [float(v) for v in torch.as_tensor(sparse).reshape(-1).tolist()]
    if not (len(tokens) == len(d) == len(s)):
        raise ValueError(f"{len(tokens)} tokens, {len(d)} dense and {len(s)} sparse values; they must match")
    seen: dict[str, int] = {}
    labels = []
    for tok in tokens:
        seen[tok] = seen.get(tok, 0) + 1
        labels.append(tok if seen[tok] == 1 else f"{tok} ({seen[tok]})")
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=d, name="dense", marker_color=KEPT_COLOR,
                         hovertemplate="%{x}<br>dense %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Bar(x=labels, y=s, name="sparse", marker_color="#d62728",
                         hovertemplate="%{x}<br>sparse %{y:.4f}<extra></extra>"))
    fig.update_layout(title=title, barmode="group")
    fig.update_xaxes(title_text="token", type="category", categoryorder="array", categoryarray=labels)
    fig.update_yaxes(title_text="attribution to the similarity")
    return fig


def agreement_figure(labels: Sequence[str], correlations: Sequence[float], *,
                     title: str = "dense vs sparse attribution correlation") -> go.Figure:
    """Bars of the dense-vs-sparse attribution correlation per example (1 = the same evidence).

    Args:
        labels: one label per example.
        correlations: Pearson r per example (NaN drawn as 0 with a note on hover).
        title: figure title.

    Returns:
        A figure with one ``Bar`` trace, y in [-1, 1].
    """
    if len(labels) != len(correlations):
        raise ValueError(f"{len(labels)} labels for {len(correlations)} correlations")
    vals = [float(c) for c in correlations]
    fig = go.Figure(go.Bar(
        x=[str(lbl) for lbl in labels], y=[0.0 if math.isnan(v) else v for v in vals], marker_color=KEPT_COLOR,
        customdata=["undefined (a constant map)" if math.isnan(v) else f"{v:.3f}" for v in vals],
        hovertemplate="%{x}<br>r = %{customdata}<extra></extra>",
    ))
    fig.update_layout(title=title)
    fig.update_xaxes(title_text="example", type="category")
    fig.update_yaxes(title_text="Pearson r", range=[-1, 1.05])
    return fig


