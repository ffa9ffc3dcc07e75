"""Kernel benchmark figures (``sparsekit.bench``): measured speedup against density, sequence length
and batch size, next to the FLOP-count ideal.

Every builder takes the run's ``CaseResult`` records (``BenchRun.results``, or a run read back with
``bench.load_run`` / ``bench.read_results``); cases without a speedup (refused, failed, baselines)
are left out.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from ._style import _empty, _log_axis, _pct_text, _ratio_text

if TYPE_CHECKING:
    from ..bench import CaseResult
    from ..bench.records import BenchRun


def _timed(results: Sequence[CaseResult], *needed: str) -> list[CaseResult]:
    """Cases with a speedup and every ``needed`` parameter set (not None, not 0)."""
    return [r for r in results if r.speedup is not None and all(r.params.get(k) for k in needed)]


def speedup_density_figure(results: Sequence[CaseResult], *, x_param: str = "density",
                           title: str = "measured speedup over dense vs density") -> go.Figure:
    """Speedup against density (kept fraction) per backend, with the FLOP-count ideal 1/density.

    Args:
        results: benchmark cases; each plotted one has a ``speedup`` and ``params[x_param]``.
        x_param: which density parameter to put on the x axis (``density`` or ``block_density``).
        title: figure title.

    Returns:
        A log-log figure; points above the dashed ideal line are impossible, points below 1 are
        slower than dense.
    """
    pts = _timed(results, x_param)
    if not pts:
        return _empty(title, "no timed sparse cases to plot")
    fig = go.Figure()
    for backend in sorted({r.backend for r in pts}):
        sel = sorted((r for r in pts if r.backend == backend), key=lambda r: r.params[x_param])
        fig.add_trace(go.Scatter(
            x=[r.params[x_param] for r in sel], y=[r.speedup for r in sel], mode="lines+markers", name=backend,
            text=[r.case for r in sel],
            hovertemplate="%{text}<br>" + x_param + " %{x:.3g}<br>speedup %{y:.2f}×<extra>" + backend + "</extra>",
        ))
    xs = sorted({float(r.params[x_param]) for r in pts})
    lo, hi = min(xs), max(xs)
    grid = np.geomspace(lo, hi, 50) if hi > lo else np.array([lo])
    fig.add_trace(go.Scatter(x=grid, y=1.0 / grid, mode="lines", name="ideal 1/density",
                             line=dict(dash="dash", color="grey"), hoverinfo="skip"))
    fig.add_hline(y=1.0, line=dict(color="black", width=1), annotation_text="dense", annotation_position="bottom right")
    fig.update_layout(title=title, xaxis_title=f"{x_param.replace('_', ' ')} (kept fraction)",
                      yaxis_title="speedup over dense (×, higher is faster)")
    ys = [float(r.speedup) for r in pts if r.speedup is not None] + [1.0 / lo, 1.0 / hi, 1.0]
    fig.update_xaxes(**_log_axis(xs, _pct_text))
    fig.update_yaxes(**_log_axis(ys, _ratio_text))
    return fig


def attention_speedup_figure(results: Sequence[CaseResult],
                             title: str = "FlexAttention: speedup over dense SDPA by sequence length") -> go.Figure:
    """Measured speedup of each block-sparse pattern against sequence length, next to its FLOP
    ideal (1 / block density, dotted, same colour); each point is labelled with its block density.

    Args:
        results: attention-suite cases; each plotted one has a ``speedup`` and ``params`` with
            ``seq_len`` and ``block_density`` (the pattern is ``params["pattern"]``, else the backend).
        title: figure title.

    Returns:
        Per pattern, a measured trace ``"<pattern> (measured)"`` and its ideal
        ``"<pattern> (ideal 1/block density)"``; log axes, a line at 1× (dense SDPA).
    """
    pts = _timed(results, "seq_len", "block_density")
    if not pts:
        return _empty(title, "no timed attention cases to plot")

    def pattern_of(r: CaseResult) -> str:
        return str(r.params.get("pattern", r.backend))

    fig = go.Figure()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2"]
    for k, pattern in enumerate(sorted({pattern_of(r) for r in pts})):
        sel = sorted((r for r in pts if pattern_of(r) == pattern), key=lambda r: r.params["seq_len"])
        color = palette[k % len(palette)]
        xs = [r.params["seq_len"] for r in sel]
        fig.add_trace(go.Scatter(
            x=xs, y=[r.speedup for r in sel], mode="lines+markers+text", name=f"{pattern} (measured)",
            line=dict(color=color), text=[f"{r.params['block_density']:.0%} blocks" for r in sel],
            textposition="top center",
            hovertemplate="%{x} tokens<br>speedup %{y:.2f}×<br>%{text}<extra>" + pattern + "</extra>",
        ))
        fig.add_trace(go.Scatter(
            x=xs, y=[1.0 / r.params["block_density"] for r in sel], mode="lines",
            name=f"{pattern} (ideal 1/block density)", line=dict(color=color, dash="dot"),
            hovertemplate="ideal %{y:.2f}×<extra>" + pattern + "</extra>",
        ))
    fig.add_hline(y=1.0, line=dict(color="black", width=1), annotation_text="dense SDPA",
                  annotation_position="bottom right")
    ys = ([float(r.speedup) for r in pts if r.speedup is not None]
          + [1.0 / r.params["block_density"] for r in pts] + [1.0])
    fig.update_layout(title=title, xaxis_title="sequence length (tokens)", yaxis_title="speedup over dense SDPA (×)")
    lens = sorted({int(r.params["seq_len"]) for r in pts})
    fig.update_xaxes(type="log", tickvals=lens, ticktext=[str(v) for v in lens])
    fig.update_yaxes(**_log_axis(ys, _ratio_text))
    return fig


def speedup_batch_figure(results: Sequence[CaseResult],
                         title: str = "2:4 speedup over dense vs batch size") -> go.Figure:
    """Speedup against batch size, one line per (weight shape, backend).

    Args:
        results: linear-suite cases; each plotted one has a ``speedup`` and ``params`` with
            ``out_features``, ``in_features`` and ``batch``.
        title: figure title.

    Returns:
        A figure with a log batch axis and a line at 1× (dense).
    """
    pts = _timed(results, "batch", "out_features", "in_features")
    if not pts:
        return _empty(title, "no timed 2:4 cases (2:4 kernels need an NVIDIA GPU, Ampere or newer)")

    def key(r: CaseResult) -> tuple[str, str]:
        return f"{r.params['out_features']}×{r.params['in_features']}", r.backend

    fig = go.Figure()
    for k in sorted({key(r) for r in pts}):
        sel = sorted((r for r in pts if key(r) == k), key=lambda r: r.params["batch"])
        fig.add_trace(go.Scatter(x=[r.params["batch"] for r in sel], y=[r.speedup for r in sel],
                                 mode="lines+markers", name=f"{k[0]} {k[1]}",
                                 hovertemplate="batch %{x}<br>speedup %{y:.2f}×<extra>%{fullData.name}</extra>"))
    fig.add_hline(y=1.0, line=dict(color="black", width=1), annotation_text="dense", annotation_position="bottom right")
    fig.update_layout(title=title, xaxis_title="batch size (rows of the input)",
                      yaxis_title="speedup over dense (×)")
    batches = sorted({int(r.params["batch"]) for r in pts})
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
    def suite(name: str) -> list[CaseResult]:
        return [r for r in results if r.suite == name]

    out: dict[str, go.Figure] = {}
    if any(r.speedup is not None for r in suite("formats")):
        out["formats"] = speedup_density_figure(suite("formats"), title="CSR / BSR: speedup over dense vs density")
    if any(r.speedup is not None for r in suite("attention")):
        out["attention"] = attention_speedup_figure(suite("attention"))
    if suite("linear"):
        out["linear"] = speedup_batch_figure(suite("linear"))
    return out


def bench_run_figure(run: BenchRun, suite: str | None = None) -> go.Figure:
    """A benchmark run's plot (``BenchRun.figure()``): one suite's figure from ``bench_figures``.

    Args:
        run: the run.
        suite: ``formats``, ``attention`` or ``linear`` (default: the first the run can draw, in that order).

    Returns:
        A plotly Figure (a note when no suite has anything to draw).
    """
    figures = bench_figures(run.results)
    if suite is None:
        return next(iter(figures.values())) if figures else _empty("benchmarks", "no timed cases to draw")
    if suite not in figures:
        raise ValueError(f"suite {suite!r} has nothing to draw in this run; it can draw {sorted(figures) or 'none'}")
    return figures[suite]
