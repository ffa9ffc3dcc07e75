"""Kernel benchmark figures (``sparsekit.bench``): measured speedup against density, sequence length
and batch size, next to the FLOP-count ideal.

``bench_figures`` takes a run's ``CaseResult`` records; the three builders under it take plain rows,
so results read back from the CLI's JSON or CSV plot the same way.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from ._style import _empty, _log_axis, _pct_text, _ratio_text

if TYPE_CHECKING:
    from ..bench import CaseResult


def speedup_density_figure(rows: Sequence[Mapping], *, x_key: str = "density",
                           title: str = "measured speedup over dense vs density") -> go.Figure:
    """Speedup against density (kept fraction) per backend, with the FLOP-count ideal 1/density.

    Args:
        rows: dicts with ``backend``, ``speedup`` and the ``x_key`` value (e.g. ``density`` or
            ``block_density``); rows without a speedup are left out.
        x_key: which density to put on the x axis.

    Returns:
        A log-log figure; points above the dashed ideal line are impossible, points below 1 are
        slower than dense.
    """
    fig = go.Figure()
    pts = [r for r in rows if r.get("speedup") is not None and r.get(x_key) is not None]
    if not pts:
        return _empty(title, "no timed sparse cases to plot")
    for backend in sorted({r["backend"] for r in pts}):
        sel = sorted((r for r in pts if r["backend"] == backend), key=lambda r: r[x_key])
        fig.add_trace(go.Scatter(
            x=[r[x_key] for r in sel], y=[r["speedup"] for r in sel], mode="lines+markers", name=backend,
            text=[r.get("label", "") for r in sel],
            hovertemplate="%{text}<br>" + x_key + " %{x:.3g}<br>speedup %{y:.2f}×<extra>" + backend + "</extra>",
        ))
    xs = sorted({float(r[x_key]) for r in pts})
    lo, hi = min(xs), max(xs)
    grid = np.geomspace(lo, hi, 50) if hi > lo else np.array([lo])
    fig.add_trace(go.Scatter(x=grid, y=1.0 / grid, mode="lines", name="ideal 1/density",
                             line=dict(dash="dash", color="grey"), hoverinfo="skip"))
    fig.add_hline(y=1.0, line=dict(color="black", width=1), annotation_text="dense", annotation_position="bottom right")
    fig.update_layout(title=title, xaxis_title=f"{x_key.replace('_', ' ')} (kept fraction)",
                      yaxis_title="speedup over dense (×, higher is faster)")
    ys = [float(r["speedup"]) for r in pts] + [1.0 / lo, 1.0 / hi, 1.0]
    fig.update_xaxes(**_log_axis(xs, _pct_text))
    fig.update_yaxes(**_log_axis(ys, _ratio_text))
    return fig


def attention_speedup_figure(rows: Sequence[Mapping],
                             title: str = "FlexAttention: speedup over dense SDPA by sequence length") -> go.Figure:
    """Measured speedup of each block-sparse pattern against sequence length, next to its FLOP
    ideal (1 / block density, dotted, same colour); each point is labelled with its block density.

    Args:
        rows: dicts with ``pattern``, ``seq_len``, ``speedup`` and ``block_density``; rows without a
            speedup are left out.
        title: figure title.

    Returns:
        Per pattern, a measured trace ``"<pattern> (measured)"`` and its ideal
        ``"<pattern> (ideal 1/block density)"``; log axes, a line at 1× (dense SDPA).
    """
    pts = [r for r in rows if r.get("speedup") is not None and r.get("block_density")]
    if not pts:
        return _empty(title, "no timed attention cases to plot")
    fig = go.Figure()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2"]
    for k, pattern in enumerate(sorted({r["pattern"] for r in pts})):
        sel = sorted((r for r in pts if r["pattern"] == pattern), key=lambda r: r["seq_len"])
        color = palette[k % len(palette)]
        xs = [r["seq_len"] for r in sel]
        fig.add_trace(go.Scatter(
            x=xs, y=[r["speedup"] for r in sel], mode="lines+markers+text", name=f"{pattern} (measured)",
            line=dict(color=color), text=[f"{r['block_density']:.0%} blocks" for r in sel], textposition="top center",
            hovertemplate="%{x} tokens<br>speedup %{y:.2f}×<br>%{text}<extra>" + pattern + "</extra>",
        ))
        fig.add_trace(go.Scatter(
            x=xs, y=[1.0 / r["block_density"] for r in sel], mode="lines", name=f"{pattern} (ideal 1/block density)",
            line=dict(color=color, dash="dot"), hovertemplate="ideal %{y:.2f}×<extra>" + pattern + "</extra>",
        ))
    fig.add_hline(y=1.0, line=dict(color="black", width=1), annotation_text="dense SDPA",
                  annotation_position="bottom right")
    ys = [float(r["speedup"]) for r in pts] + [1.0 / r["block_density"] for r in pts] + [1.0]
    fig.update_layout(title=title, xaxis_title="sequence length (tokens)", yaxis_title="speedup over dense SDPA (×)")
    lens = sorted({int(r["seq_len"]) for r in pts})
    fig.update_xaxes(type="log", tickvals=lens, ticktext=[str(v) for v in lens])
    fig.update_yaxes(**_log_axis(ys, _ratio_text))
    return fig


def speedup_batch_figure(rows: Sequence[Mapping], title: str = "2:4 speedup over dense vs batch size") -> go.Figure:
    """Speedup against batch size, one line per (shape, backend).

    Args:
        rows: dicts with ``shape``, ``backend``, ``batch`` and ``speedup``.

    Returns:
        A figure with a log batch axis and a line at 1× (dense).
    """
    pts = [r for r in rows if r.get("speedup") is not None]
    if not pts:
        return _empty(title, "no timed 2:4 cases (2:4 kernels need an NVIDIA GPU, Ampere or newer)")
    fig = go.Figure()
    for key in sorted({(r["shape"], r["backend"]) for r in pts}):
        sel = sorted((r for r in pts if (r["shape"], r["backend"]) == key), key=lambda r: r["batch"])
        fig.add_trace(go.Scatter(x=[r["batch"] for r in sel], y=[r["speedup"] for r in sel], mode="lines+markers",
                                 name=f"{key[0]} {key[1]}",
                                 hovertemplate="batch %{x}<br>speedup %{y:.2f}×<extra>%{fullData.name}</extra>"))
    fig.add_hline(y=1.0, line=dict(color="black", width=1), annotation_text="dense", annotation_position="bottom right")
    fig.update_layout(title=title, xaxis_title="batch size (rows of the input)",
                      yaxis_title="speedup over dense (×)")
    batches = sorted({int(r["batch"]) for r in pts})
    fig.update_xaxes(type="log", tickvals=batches, ticktext=[str(b) for b in batches])
    return fig




def bench_figures(results: Sequence[CaseResult]) -> dict[str, go.Figure]:
    """The speedup figures of one benchmark run, one per suite that has something to show.

    Args:
        results: the run's cases (``BenchRun.results``), in any order.

    Returns:
        Suite name -> figure, in the order ``formats`` (speedup vs density), ``attention`` (vs
        sequence length), ``linear`` (2:4 vs batch size). A suite appears when it has timed cases;
        ``linear`` also when all its cases were refused, so its figure can say why.
    """
    def timed(suite: str) -> list[CaseResult]:
        return [r for r in results if r.suite == suite and r.speedup is not None]

    out: dict[str, go.Figure] = {}
    if formats := timed("formats"):
        out["formats"] = speedup_density_figure(
            [{"backend": r.backend, "speedup": r.speedup, "density": r.params.get("density"), "label": r.case}
             for r in formats], title="CSR / BSR: speedup over dense vs density")
    if attention := timed("attention"):
        out["attention"] = attention_speedup_figure(
            [{"pattern": r.params.get("pattern", r.backend), "seq_len": r.params.get("seq_len"),
              "speedup": r.speedup, "block_density": r.params.get("block_density")} for r in attention])
    linear = timed("linear")
    if linear or any(r.suite == "linear" for r in results):
        out["linear"] = speedup_batch_figure(
            [{"shape": f"{r.params.get('out_features')}×{r.params.get('in_features')}", "backend": r.backend,
              "batch": r.params.get("batch"), "speedup": r.speedup} for r in linear])
    return out
