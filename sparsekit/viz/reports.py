"""Figures of a sparsified model: kept fraction per layer, parameters by type, quality, memory."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

from ._style import _BYTES_PER_MB, KEPT_COLOR, PRUNED_COLOR, SKIPPED_COLOR, _empty, _percent

if TYPE_CHECKING:
    from ..sparsify import LayerReport


def _records(report: Any, what: str = "report") -> Sequence[LayerReport]:
    """The report as given, after checking it holds records (a list of dicts is the old API)."""
    if isinstance(report, (str, bytes, Mapping)) or not isinstance(report, Sequence):
        raise ValueError(f"{what} must be a list of LayerReport (SparsifyResult.report), got {type(report).__name__}")
    for i, r in enumerate(report):
        if not hasattr(r, "kept_fraction") or not hasattr(r, "skipped_reason"):
            raise ValueError(f"{what}[{i}] must be a LayerReport (SparsifyResult.report), got {type(r).__name__}")
    return report


def _number(value: Any, where: str, lo: float = 0.0, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where} must be a number, got {value!r}")
    value = float(value)
    if not lo <= value <= hi:
        raise ValueError(f"{where} must be between {lo:g} and {hi:g}, got {value:g}")
    return value


def layer_kept_figure(report: Sequence[LayerReport]) -> go.Figure:
    """Horizontal bars of the kept fraction per layer; skipped layers in a separate colour.

    Args:
        report: the per-layer report (``SparsifyResult.report``); a layer with a ``skipped_reason``
            was left dense (the reason shows on hover).

    Returns:
        A figure with ``data[0]`` the sparsified layers and ``data[1]`` the skipped ones,
        layers top to bottom in the given order.
    """
    if not _records(report):
        return _empty("kept fraction per layer", "no layers to show")
    groups: dict[bool, tuple[list[str], list[float], list[str]]] = {False: ([], [], []), True: ([], [], [])}
    for r in report:
        ys, xs, custom = groups[bool(r.skipped_reason)]
        ys.append(r.name)
        xs.append(r.kept_fraction)
        custom.append(r.skipped_reason)
    fig = go.Figure()
    for skipped, label, color in ((False, "sparsified", KEPT_COLOR), (True, "skipped (left dense)", SKIPPED_COLOR)):
        ys, xs, custom = groups[skipped]
        extra = "<br>skipped: %{customdata}" if skipped else ""
        fig.add_trace(go.Bar(
            x=xs, y=ys, orientation="h", name=label, marker_color=color, customdata=custom,
            texttemplate="%{x:.1%}", textposition="auto",
            hovertemplate=f"%{{y}}<br>kept %{{x:.2%}}{extra}<extra></extra>",
        ))
    fig.update_layout(title="kept fraction per layer", height=max(300, 120 + 24 * len(report)),
                      barmode="overlay")
    # The whole 0-100 % scale with fixed ticks, so a 50 % layer reads as half full in any width.
    fig.update_xaxes(title_text="kept fraction", range=[0, 1.05], tickformat=".0%",
                     tickvals=[0, 0.25, 0.5, 0.75, 1.0])
    fig.update_yaxes(title_text="layer", type="category", categoryorder="array",
                     categoryarray=[r.name for r in report], autorange="reversed")
    return fig


def params_by_type_figure(counts: Mapping[str, int]) -> go.Figure:
    """Bars of parameter counts by layer type, largest first.

    Args:
        counts: layer type (e.g. ``"Linear"``) -> number of parameters (>= 0).

    Returns:
        A figure with one ``Bar`` (x: type, y: parameters).

    Raises:
        ValueError: not a dict, or a count that is not a non-negative integer.
    """
    if not isinstance(counts, Mapping):
        raise ValueError(f"counts must be a dict of layer type -> parameters, got {type(counts).__name__}")
    if not counts:
        return _empty("parameters by layer type", "no parameters to show")
    items = []
    for kind, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"parameter count for {kind!r} must be a non-negative integer, got {n!r}")
        items.append((str(kind), int(n)))
    items.sort(key=lambda kv: -kv[1])
    total = sum(n for _, n in items)
    fig = go.Figure(go.Bar(
        x=[k for k, _ in items], y=[n for _, n in items], marker_color=KEPT_COLOR,
        texttemplate="%{y:.3s}", textposition="auto",
        hovertemplate="%{x}<br>%{y:,} parameters<extra></extra>",
    ))
    # Two short title lines: one long line was cut in a narrow column.
    fig.update_layout(title=dict(text=f"parameters by layer type<br><sup>{total:,} in total</sup>"))
    fig.update_xaxes(title_text="layer type", type="category")
    fig.update_yaxes(title_text="parameters")
    return fig


def quality_figure(dense: Mapping[str, float], sparse: Mapping[str, float],
                   labels: Mapping[str, str] | None = None) -> go.Figure:
    """Grouped bars of each quality metric for the dense and the sparse model.

    Args:
        dense: metric key -> value for the dense model (its order sets the bar order).
        sparse: the same keys for the sparse model.
        labels: optional metric key -> display name.

    Returns:
        A figure with ``data[0]`` dense and ``data[1]`` sparse values per metric; hover on a
        sparse bar gives the change relative to dense.

    Raises:
        ValueError: the two dicts have different keys (named), or a value is not a finite number.
    """
    if not isinstance(dense, Mapping) or not isinstance(sparse, Mapping):
        raise ValueError("dense and sparse must be dicts of metric -> value")
    if set(dense) != set(sparse):
        only_d = sorted(set(dense) - set(sparse))
        only_s = sorted(set(sparse) - set(dense))
        raise ValueError(f"dense and sparse metrics differ: only in dense {only_d}, only in sparse {only_s}")
    labels = dict(labels or {})
    keys = list(dense)
    if not keys:
        return _empty("quality: dense vs sparse", "no metrics to show")
    d = [_number(dense[k], f"dense[{k!r}]", -math.inf, math.inf) for k in keys]
    s = [_number(sparse[k], f"sparse[{k!r}]", -math.inf, math.inf) for k in keys]
    x = [str(labels.get(k, k)) for k in keys]
    change = [_percent((sv - dv) / abs(dv)) if dv != 0 else "n/a" for dv, sv in zip(d, s)]
    change = [c if c.startswith(("-", "0", "n")) else "+" + c for c in change]
    fig = go.Figure([
        go.Bar(x=x, y=d, name="dense", marker_color=PRUNED_COLOR, texttemplate="%{y:.4~g}",
               hovertemplate="%{x}<br>dense: %{y:.4~g}<extra></extra>"),
        go.Bar(x=x, y=s, name="sparse", marker_color=KEPT_COLOR, texttemplate="%{y:.4~g}",
               customdata=change,
               hovertemplate="%{x}<br>sparse: %{y:.4~g} (%{customdata} vs dense)<extra></extra>"),
    ])
    fig.update_layout(title="quality: dense vs sparse model", barmode="group")
    fig.update_xaxes(title_text="metric", type="category")
    fig.update_yaxes(title_text="metric value")
    return fig


_FORMATS = (("dense", "dense_bytes"), ("bitmask", "bitmask_bytes"), ("CSR", "csr_bytes"),
            ("N:M", "nm_bytes"))


def _total(layers: Sequence[LayerReport], key: str) -> int | None:
    sizes = [getattr(r, key) for r in layers]
    # N:M sizes exist only for layers that took an N:M pattern; a sum over some of them would
    # understate the model, so the total is left out.
    return None if any(s is None for s in sizes) else sum(sizes)


def memory_figure(report: Sequence[LayerReport], *, per_layer: bool = False) -> go.Figure:
    """Grouped bars of weight memory per storage format: the pruned layers together, or each layer.

    Args:
        report: the per-layer report (``SparsifyResult.report``).
        per_layer: one group of bars per layer (all of them, in order) instead of one group that
            totals the pruned layers (layers left dense are stored dense whatever the format).

    Returns:
        A figure with one ``Bar`` trace per format (dense, bitmask, CSR, then N:M when any group
        has it), y in MB (1 MB = 2**20 bytes). A total has an N:M size only when every pruned
        layer has one.
    """
    title = "weight memory per storage format"
    _records(report)
    if per_layer:
        names = [r.name for r in report]
        columns = {key: [getattr(r, key) for r in report] for _, key in _FORMATS}
    else:
        pruned = [r for r in report if r.pruned]
        if not pruned:
            return _empty(title, "no pruned layers to show")
        names = [f"all {len(pruned)} pruned layers"]
        columns = {key: [_total(pruned, key)] for _, key in _FORMATS}
    if not names:
        return _empty(title, "no layers to show")
    fig = go.Figure()
    for label, key in _FORMATS:
        values = [None if b is None else b / _BYTES_PER_MB for b in columns[key]]
        if all(v is None for v in values):
            continue  # only N:M may be absent, and then it has nothing to draw
        fig.add_trace(go.Bar(
            x=names, y=values, name=label,
            hovertemplate=f"%{{x}}<br>{label}: %{{y:.3f}} MB<extra></extra>",
        ))
    fig.update_layout(title=title, barmode="group")
    fig.update_xaxes(title_text="layer", type="category")
    fig.update_yaxes(title_text="weight memory (MB)", rangemode="tozero")
    return fig
