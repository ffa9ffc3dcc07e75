"""Sensitivity scan figures (``sparsekit.sensitivity``): the unit x setting heatmap, proxy vs drop; and the
per-layer sparsities an allocation (``sparsekit.allocation``) chose."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from ._style import RUN_COLORS, _empty

if TYPE_CHECKING:
    from ..allocation import Allocation
    from ..sensitivity import SensitivityScan

VALUES = ("drop", "proxy")


def _cell(v: float | None) -> str:
    return "–" if v is None else f"{v:.4g}"


def sensitivity_heatmap(scan: SensitivityScan, *, value: str = "drop") -> go.Figure:
    """Units (rows, in model order, first at the top) x settings (columns), coloured by the quality
    drop or by the proxy error of pruning that unit alone.

    Args:
        scan: a ``sparsekit.sensitivity.SensitivityScan``.
        value: ``drop`` (metric lost against dense; positive = worse, on a scale centred at 0) or
            ``proxy`` (relative output reconstruction error, from 0).

    Returns:
        A figure with one heatmap trace; each cell's hover names the unit, its layer count and
        weights, the setting, the drop, the metric and the proxy. Cells not measured are blank.
    """
    if value not in VALUES:
        raise ValueError(f"value must be one of {VALUES}, got {value!r}")
    table = scan.drop if value == "drop" else scan.proxy
    cfg = scan.config
    title = (f"{scan.metric} drop" if value == "drop" else "proxy: relative output error") + \
        f" when one {'layer' if cfg.grouping == 'layer' else 'group'} is pruned ({cfg.method})"
    if not any(v is not None for row in table for v in row):
        return _empty(title, "nothing measured for this value (a proxy-only scan has no drops)")
    custom = [[[len(scan.unit_layers[i]), scan.unit_numel[i], _cell(scan.drop[i][j]), _cell(scan.quality[i][j]),
                _cell(scan.proxy[i][j])] for j in range(len(scan.settings))] for i in range(len(scan.units))]
    heat = go.Heatmap(
        z=[list(row) for row in table], x=list(scan.settings), y=list(scan.units), customdata=custom,
        colorscale="RdBu_r" if value == "drop" else "Reds", zmid=0 if value == "drop" else None,
        zmin=0 if value == "proxy" else None, colorbar=dict(title=value),
        hovertemplate=("<b>%{y}</b> (%{customdata[0]} layers, %{customdata[1]} weights)<br>setting %{x}<br>"
                       f"drop %{{customdata[2]}}<br>{scan.metric} %{{customdata[3]}} (dense {scan.dense_quality:.4g})"
                       "<br>proxy %{customdata[4]}<extra></extra>"),
    )
    fig = go.Figure(heat)
    fig.update_layout(title=title, height=max(320, 22 * len(scan.units) + 160))
    fig.update_xaxes(title_text="setting", type="category")
    fig.update_yaxes(title_text="pruned alone", autorange="reversed", type="category")
    return fig


def sensitivity_proxy_figure(scan: SensitivityScan) -> go.Figure:
    """Proxy error against the measured drop, one colour per setting, with its Spearman correlation.

    Args:
        scan: a full-mode ``SensitivityScan``.

    Returns:
        A scatter figure, one trace per setting (name ``<setting> (ρ = ...)``), hover naming the unit.
    """
    title = "proxy vs measured drop"
    fig = go.Figure()
    for j, setting in enumerate(scan.settings):
        pts = [(scan.proxy[i][j], scan.drop[i][j], u) for i, u in enumerate(scan.units)
               if scan.proxy[i][j] is not None and scan.drop[i][j] is not None]
        if not pts:
            continue
        rho = scan.spearman[j]
        fig.add_trace(go.Scatter(
            x=[p for p, _, _ in pts], y=[d for _, d, _ in pts], text=[u for _, _, u in pts], mode="markers",
            name=f"{setting} (ρ = {'–' if rho is None else f'{rho:.2f}'})",
            marker=dict(color=RUN_COLORS[j % len(RUN_COLORS)]),
            hovertemplate="%{text}<br>proxy %{x:.4g}<br>drop %{y:.4g}<extra></extra>"))
    if not fig.data:
        return _empty(title, "no cell has both a proxy and a measured drop")
    fig.update_layout(title=title, legend_title_text="setting (Spearman ρ)")
    fig.update_xaxes(title_text="proxy: relative output error of the unit")
    fig.update_yaxes(title_text=f"{scan.metric} drop")
    return fig


def allocation_figure(allocation: Allocation) -> go.Figure:
    """The sparsity each layer got under a non-uniform allocation (bars, in layer order), with the
    weight-count weighted overall sparsity as a dashed line."""
    names = list(allocation.sparsity)
    if not names:
        return _empty("allocation", "no layers in this allocation")
    total = sum(allocation.numel[n] for n in names)
    overall = sum(allocation.pruned[n] for n in names) / total if total else 0.0
    fig = go.Figure(go.Bar(x=names, y=[100 * allocation.sparsity[n] for n in names], marker_color=RUN_COLORS[0],
                           hovertemplate="%{x}<br>sparsity %{y:.2f}%<extra></extra>", name="layer sparsity"))
    fig.add_hline(y=100 * overall, line_dash="dash", annotation_text=f"overall {100 * overall:.2f}%")
    fig.update_layout(title=f"{allocation.kind} allocation: sparsity per layer (pruned share, %)",
                      yaxis_title="sparsity (%)", xaxis_tickangle=-45, showlegend=False)
    return fig



def layer_sparsity_figure(per_layer: Mapping[str, float], target: float | None = None) -> go.Figure:
    """The sparsity an allocation chose for each layer: one horizontal bar per layer (first layer on top),
    the value axis in percent like the page's slider, one row of height per layer so names never overlap.

    Args:
        per_layer: layer name -> pruned share (0..1).
        target: the overall share asked for (0..1), drawn as a dashed line; None for none.
    """
    names = list(per_layer)
    if not names:
        return _empty("sparsity chosen per layer", "no layers in this allocation")
    values = [100 * float(per_layer[n]) for n in names]
    if any(not 0 <= v <= 100 for v in values):
        raise ValueError(f"per-layer sparsities must be shares between 0 and 1, got {per_layer!r}")
    fig = go.Figure(go.Bar(y=names, x=values, orientation="h", marker_color=RUN_COLORS[0], name="layer sparsity",
                           hovertemplate="%{y}<br>sparsity chosen %{x:.1f} %<extra></extra>"))
    if target is not None:
        fig.add_vline(x=100 * target, line_dash="dash", annotation_text=f"target {100 * target:.0f} %",
                      annotation_position="top")
    fig.update_xaxes(title_text="sparsity chosen for the layer (% pruned)", range=[0, 100], ticksuffix=" %")
    fig.update_yaxes(title_text="", autorange="reversed", automargin=True, type="category")
    fig.update_layout(title="Sparsity chosen per layer", showlegend=False, height=max(260, 120 + 24 * len(names)),
                      bargap=0.25)
    return fig
