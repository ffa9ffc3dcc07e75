"""Plotly figure builders: data in, ``go.Figure`` out. No Streamlit here.

The numbers come from ``sparsekit.maskstats`` (or from plain dicts built by the library), so a
notebook can reproduce any figure's data without plotly. Heatmaps never carry more than
``max_cells`` cells and are sent as float32, so a large layer stays light in the browser.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from . import maskstats as ms
from .maskstats import DEFAULT_MAX_CELLS

KEPT_COLOR = "#1f77b4"
PRUNED_COLOR = "#b0b0b0"
SKIPPED_COLOR = "#b0b0b0"
# Both-pruned light, both-kept dark, the two kinds of disagreement in contrasting hues.
DIFF_COLORS = ("#ececec", "#d62728", "#1f77b4", "#4d4d4d")
TEXT_CELLS_MAX = 20
"""Largest zoom block side that gets the weight value written in each cell."""
_BYTES_PER_MB = 2**20  # the project's MB (see sparsekit.models.base)


def _empty(title: str, note: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False)
    fig.add_annotation(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


def _percent(fraction: float) -> str:
    # Three significant digits so a tiny but non-zero change never prints as 0.00%.
    return "0%" if fraction == 0 else f"{100 * fraction:.3g}%"


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


# ----------------------------------------------------------------------------- masks


def _tile_heatmap(grid: ms.TileGrid, *, colorbar: str, colorscale: str, what: str) -> go.Heatmap:
    tr, tc = grid.tile_rows, grid.tile_cols
    if tr == 1 and tc == 1:
        where = "row %{y}, column %{x}"
    else:
        where = f"{tr}×{tc} tile from row %{{y}}, column %{{x}}"
    return go.Heatmap(
        z=grid.density.astype(np.float32),
        # Tile starts as coordinates: the axes and the hover read in real matrix indices.
        x=grid.col_starts,
        y=grid.row_starts,
        zmin=0.0,
        zmax=1.0,
        colorscale=colorscale,
        colorbar=dict(title=dict(text=colorbar)),
        hovertemplate=f"{where}<br>{what}: %{{z:.3f}}<extra></extra>",
    )


def _matrix_axes(fig: go.Figure) -> None:
    fig.update_xaxes(title_text="input feature (column index)")
    # Row 0 at the top, as in the matrix.
    fig.update_yaxes(title_text="output unit (row index)", autorange="reversed")


def mask_heatmap(mask: Any, *, max_cells: int = DEFAULT_MAX_CELLS, title: str | None = None) -> go.Figure:
    """Heatmap of a mask's kept fraction per tile (exact cells when the mask is small).

    Args:
        mask: bool tensor (True = kept), 2-D or a conv mask (shown as ``[out, in*kh*kw]``).
        max_cells: most heatmap cells sent to the browser.
        title: figure title; by default it names the tile size, the shape and the kept share.

    Returns:
        A figure with one ``Heatmap``: ``z`` is the kept fraction per tile (0..1), ``x``/``y``
        the first column/row of each tile.

    Raises:
        ValueError: as ``maskstats.density_tiles``.
    """
    grid = ms.density_tiles(mask, max_cells)
    rows, cols = grid.shape
    kept = grid.n_true / (rows * cols)
    if title is None:
        if grid.tile_rows == 1 and grid.tile_cols == 1:
            title = f"kept (1) or pruned (0) per weight — {rows}×{cols} mask, {kept:.1%} kept"
        else:
            title = (f"kept fraction per {grid.tile_rows}×{grid.tile_cols} tile — "
                     f"{rows}×{cols} mask, {kept:.1%} kept")
    fig = go.Figure(_tile_heatmap(grid, colorbar="kept fraction", colorscale="Viridis",
                                  what="kept fraction"))
    fig.update_layout(title=title)
    _matrix_axes(fig)
    return fig


def mask_zoom_figure(weight: Any, mask: Any, row0: int, col0: int, rows: int = 32,
                     cols: int = 32) -> go.Figure:
    """Exact cells of a weight block: kept weights coloured by value, pruned ones grey.

    Args:
        weight: ``[out, in]`` weight or a conv weight (shown as ``[out, in*kh*kw]``).
        mask: bool tensor of the same shape (True = kept).
        row0: first row of the block.
        col0: first column of the block.
        rows: block height, 1..64 (clipped at the matrix edge).
        cols: block width, 1..64 (clipped at the matrix edge).

    Returns:
        A figure with two heatmaps on the same cells: ``data[0]`` the kept weights (pruned
        cells NaN; diverging colours centred at 0), ``data[1]`` the pruned cells in grey. Blocks
        up to 32×32 also print each value (3 significant digits).

    Raises:
        ValueError: as ``maskstats.zoom``.
    """
    block = ms.zoom(weight, mask, row0, col0, rows, cols)
    w, kept = block.weight, block.kept
    values = np.array([[f"{v:.3g}" for v in line] for line in w], dtype=object)
    show_text = w.shape[0] <= TEXT_CELLS_MAX and w.shape[1] <= TEXT_CELLS_MAX
    common = dict(x=block.col_index, y=block.row_index, xgap=1, ygap=1)
    text_kw = dict(texttemplate="%{text}", textfont=dict(size=10)) if show_text else {}
    kept_trace = go.Heatmap(
        z=np.where(kept, w, np.nan),
        text=np.where(kept, values, ""),
        colorscale="RdBu_r",
        zmid=0.0,
        colorbar=dict(title=dict(text="weight value")),
        name="kept",
        hovertemplate="row %{y}, column %{x}<br>w = %{text} (kept)<extra></extra>",
        **common, **text_kw,
    )
    pruned_trace = go.Heatmap(
        z=np.where(kept, np.nan, 0.0),
        text=np.where(kept, "", values),
        colorscale=[[0.0, PRUNED_COLOR], [1.0, PRUNED_COLOR]],
        showscale=False,
        name="pruned",
        hovertemplate="row %{y}, column %{x}<br>w = %{text} (pruned)<extra></extra>",
        **common, **text_kw,
    )
    r1 = block.row0 + w.shape[0] - 1
    c1 = block.col0 + w.shape[1] - 1
    fig = go.Figure([kept_trace, pruned_trace])
    fig.update_layout(
        title=(f"weights in rows {block.row0}–{r1}, columns {block.col0}–{c1} "
               f"({int(kept.sum())} of {kept.size} kept; grey = pruned)"),
        plot_bgcolor="white",
    )
    _matrix_axes(fig)
    # Cells wide enough for their printed value; the height follows the number of rows.
    fig.update_xaxes(range=[block.col0 - 0.5, c1 + 0.5])
    fig.update_yaxes(range=[r1 + 0.5, block.row0 - 0.5], autorange=False)
    fig.update_layout(height=int(min(900, max(320, 30 * w.shape[0] + 140))))
    return fig


def nm_group_figure(weight: Any, mask: Any, m: int, row: int, start_group: int = 0,
                    count: int = 8, *, dim: int = 1) -> go.Figure:
    """Bars of |w| for every entry of some N:M groups of one row, kept vs pruned.

    Args:
        weight: ``[out, in]`` Linear or ``[out, in, kh, kw]`` conv weight.
        mask: bool tensor of the same shape (True = kept).
        m: group size M.
        row: output unit.
        start_group: first group shown.
        count: number of groups shown (1..64, clipped at the end of the row).
        dim: the dim groups run along (see ``maskstats.nm_groups``).

    Returns:
        A figure with ``data[0]`` the kept entries and ``data[1]`` the pruned ones (x: column
        index in the ``as_matrix`` view, as categories in group order; y: |w|), dashed lines
        between groups.

    Raises:
        ValueError: as ``maskstats.nm_groups``.
    """
    groups = ms.nm_groups(weight, mask, m, row, start_group, count, dim=dim)
    order: list[str] = []
    traces = {True: ([], [], []), False: ([], [], [])}
    for g in groups:
        for col, w, a, k in zip(g["columns"], g["weight"], g["abs_weight"], g["kept"]):
            order.append(str(col))
            xs, ys, custom = traces[bool(k)]
            xs.append(str(col))
            ys.append(a)
            custom.append([w, g["group"]])
    fig = go.Figure()
    for is_kept, name, color in ((True, "kept", KEPT_COLOR), (False, "pruned", PRUNED_COLOR)):
        xs, ys, custom = traces[is_kept]
        fig.add_trace(go.Bar(
            x=xs, y=ys, name=name, marker_color=color, customdata=custom,
            hovertemplate=("column %{x} (group %{customdata[1]})<br>|w| = %{y:.4~g}, "
                           f"w = %{{customdata[0]:.4~g}}<br>{name}<extra></extra>"),
        ))
    for k in range(1, len(groups)):
        # On a category axis, category i sits at x = i, so boundaries fall on k*m - 0.5.
        fig.add_vline(x=k * m - 0.5, line_dash="dash", line_color="#666666", line_width=1)
    if len(groups) <= 16:
        for k, g in enumerate(groups):
            fig.add_annotation(x=k * m + (m - 1) / 2, y=1.0, yref="paper", yanchor="bottom",
                               showarrow=False, text=f"g{g['group']}: {g['n_kept']}/{m} kept")
    kept_counts = {g["n_kept"] for g in groups}
    rule = f"{kept_counts.pop()} of every {m} kept" if len(kept_counts) == 1 else f"groups of {m}"
    first, last = groups[0]["group"], groups[-1]["group"]
    fig.update_layout(
        title=f"|w| in row {row}, groups {first}–{last} ({rule}); kept vs pruned",
        barmode="overlay",
        bargap=0.15,
        margin=dict(t=90),
    )
    fig.update_xaxes(title_text="input feature (column index)", type="category",
                     categoryorder="array", categoryarray=order)
    fig.update_yaxes(title_text="|weight|", rangemode="tozero")
    return fig


def magnitude_histogram(weight: Any, mask: Any, bins: int = 80, *, log_y: bool = False) -> go.Figure:
    """Overlaid histograms of |w| for kept and pruned weights, exact over the whole layer.

    The histograms are binned in the library (``maskstats.magnitude_histograms``) and drawn as
    bars, so the browser gets ``2 * bins`` numbers rather than one per weight.

    Args:
        weight: weight tensor (any shape with at least 2 dims).
        mask: bool tensor of the same shape (True = kept).
        bins: number of equal-width bins from 0 to max |w| (1..1000).
        log_y: logarithmic count axis (pruned weights often dwarf the kept ones near 0).

    Returns:
        A figure with ``data[0]`` the kept counts and ``data[1]`` the pruned counts per bin
        (x: bin centre, width: bin width); legend names carry the exact totals.

    Raises:
        ValueError: as ``maskstats.magnitude_histograms``.
    """
    hist = ms.magnitude_histograms(weight, mask, bins)
    edges = hist.edges
    centres = (edges[:-1] + edges[1:]) / 2
    widths = np.diff(edges)
    custom = np.stack([edges[:-1], edges[1:]], axis=1)
    fig = go.Figure()
    for counts, label, color in ((hist.kept, "kept", KEPT_COLOR), (hist.pruned, "pruned", PRUNED_COLOR)):
        fig.add_trace(go.Bar(
            x=centres, y=counts, width=widths, name=f"{label} ({int(counts.sum()):,})",
            marker_color=color, opacity=0.65, customdata=custom,
            hovertemplate=(f"|w| in [%{{customdata[0]:.3~g}}, %{{customdata[1]:.3~g}}]<br>"
                           f"%{{y:,}} {label} weights<extra></extra>"),
        ))
    n_kept, n_pruned = int(hist.kept.sum()), int(hist.pruned.sum())
    fig.update_layout(
        title=(f"|w| of kept vs pruned weights — {n_kept:,} kept, {n_pruned:,} pruned "
               f"({bins} bins)"),
        barmode="overlay",
        bargap=0,
    )
    fig.update_xaxes(title_text="|weight|")
    fig.update_yaxes(title_text="number of weights", type="log" if log_y else "linear")
    return fig


def density_profile(mask: Any) -> go.Figure:
    """Kept fraction per row (output unit) and per column (input feature), one subplot each.

    Args:
        mask: bool tensor (True = kept), 2-D or a conv mask (shown as ``[out, in*kh*kw]``).

    Returns:
        A two-row figure: ``data[0]`` kept fraction per row, ``data[1]`` per column; a dashed
        line marks the overall kept fraction.

    Raises:
        ValueError: as ``maskstats.row_density``.
    """
    rows = ms.row_density(mask)
    cols = ms.col_density(mask)
    overall = float(rows.mean())  # every row has the same number of cells
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.18, subplot_titles=(
        "kept fraction per row (output unit)", "kept fraction per column (input feature)"))
    for i, (values, what) in enumerate(((rows, "row"), (cols, "column")), start=1):
        fig.add_trace(go.Scatter(
            x=np.arange(values.size), y=values.astype(np.float32), mode="lines",
            line=dict(color=KEPT_COLOR, width=1), name=f"per {what}",
            hovertemplate=f"{what} %{{x}}<br>kept fraction: %{{y:.3f}}<extra></extra>",
        ), row=i, col=1)
        fig.add_hline(y=overall, line_dash="dash", line_color="#666666", row=i, col=1)
        fig.update_yaxes(title_text="kept fraction", range=[0, 1.02], row=i, col=1)
    fig.update_xaxes(title_text="output unit (row index)", row=1, col=1)
    fig.update_xaxes(title_text="input feature (column index)", row=2, col=1)
    fig.update_layout(title=f"kept fraction by row and column ({overall:.1%} kept overall, dashed)",
                      showlegend=False)
    return fig


def mask_diff_figure(mask_a: Any, mask_b: Any, *, labels: tuple[str, str] = ("A", "B"),
                     max_cells: int = DEFAULT_MAX_CELLS) -> go.Figure:
    """Where two masks differ: a per-cell map for small masks, differing fraction per tile else.

    Args:
        mask_a: bool tensor (True = kept), 2-D or a conv mask.
        mask_b: bool tensor of the same shape.
        labels: names of the two masks in the title, colour bar and hover.
        max_cells: most heatmap cells; a mask with at most this many entries gets the
            per-cell map.

    Returns:
        A figure with one heatmap. Per-cell map: ``z`` codes 0 = both pruned, 1 = only
        ``labels[0]`` kept, 2 = only ``labels[1]`` kept, 3 = both kept. Tiled: ``z`` is the
        fraction of differing positions per tile. The title gives SAD as a count and percent.

    Raises:
        ValueError: non-bool masks, different shapes (both named), fewer than 2 dims, bad labels
            or ``max_cells < 1``.
    """
    if (not isinstance(labels, (tuple, list)) or len(labels) != 2
            or not all(isinstance(s, str) and s for s in labels)):
        raise ValueError(f"labels must be two non-empty strings, got {labels!r}")
    la, lb = labels
    stats = ms.mask_diff(mask_a, mask_b)
    a = ms.as_matrix(mask_a)
    b = ms.as_matrix(mask_b)
    if isinstance(max_cells, bool) or not isinstance(max_cells, (int, np.integer)) or max_cells < 1:
        raise ValueError(f"max_cells must be an integer of at least 1, got {max_cells!r}")
    head = (f"{la} vs {lb}: SAD = {stats.sad:,} of {stats.numel:,} positions "
            f"({_percent(stats.fraction)})")
    names = ("both pruned", f"only {la} kept", f"only {lb} kept", "both kept")
    if a.numel() <= max_cells:
        # code = a + 2b: 0 neither, 1 only A, 2 only B, 3 both.
        z = (a.to("cpu", torch.int8) + 2 * b.to("cpu", torch.int8)).numpy()
        scale = []
        for i, color in enumerate(DIFF_COLORS):
            scale += [[i / 4, color], [(i + 1) / 4, color]]
        key = ", ".join(f"{i} {n}" for i, n in enumerate(names))
        trace = go.Heatmap(
            z=z, x=np.arange(z.shape[1]), y=np.arange(z.shape[0]),
            zmin=-0.5, zmax=3.5, colorscale=scale,
            colorbar=dict(title=dict(text="state"), tickvals=[0, 1, 2, 3], ticktext=list(names)),
            # A per-cell text array would multiply the payload; the key is short enough.
            hovertemplate=f"row %{{y}}, column %{{x}}<br>state %{{z}} ({key})<extra></extra>",
        )
        sub = "which mask keeps each weight"
    else:
        grid = ms.diff_tiles(mask_a, mask_b, max_cells)
        trace = _tile_heatmap(grid, colorbar="fraction differing", colorscale="Reds",
                              what="fraction differing")
        sub = f"fraction of positions that differ per {grid.tile_rows}×{grid.tile_cols} tile"
    fig = go.Figure(trace)
    fig.update_layout(title=f"{head}<br><sup>{sub}</sup>")
    _matrix_axes(fig)
    return fig


# ----------------------------------------------------------------------------- reports


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


def _number(value: Any, where: str, lo: float = 0.0, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where} must be a number, got {value!r}")
    value = float(value)
    if not lo <= value <= hi:
        raise ValueError(f"{where} must be between {lo:g} and {hi:g}, got {value:g}")
    return value


def layer_kept_figure(rows: Sequence[Mapping]) -> go.Figure:
    """Horizontal bars of the kept fraction per layer; skipped layers in a separate colour.

    Args:
        rows: dicts with ``name`` and ``kept_fraction`` (0..1); a non-empty ``skipped_reason``
            marks a layer left dense (its reason shows on hover).

    Returns:
        A figure with ``data[0]`` the sparsified layers and ``data[1]`` the skipped ones,
        layers top to bottom in the given order.

    Raises:
        ValueError: not a list of dicts, a missing key or a fraction outside 0..1.
    """
    rows = _check_rows(rows, ("name", "kept_fraction"), "rows")
    if not rows:
        return _empty("kept fraction per layer", "no layers to show")
    names = [str(r["name"]) for r in rows]
    groups = {False: ([], [], []), True: ([], [], [])}
    for i, r in enumerate(rows):
        frac = _number(r["kept_fraction"], f"rows[{i}]['kept_fraction']", 0.0, 1.0)
        reason = r.get("skipped_reason") or ""
        ys, xs, custom = groups[bool(reason)]
        ys.append(str(r["name"]))
        xs.append(frac)
        custom.append(str(reason))
    fig = go.Figure()
    for skipped, label, color in ((False, "sparsified", KEPT_COLOR), (True, "skipped (left dense)", SKIPPED_COLOR)):
        ys, xs, custom = groups[skipped]
        extra = "<br>skipped: %{customdata}" if skipped else ""
        fig.add_trace(go.Bar(
            x=xs, y=ys, orientation="h", name=label, marker_color=color, customdata=custom,
            texttemplate="%{x:.1%}", textposition="auto",
            hovertemplate=f"%{{y}}<br>kept %{{x:.2%}}{extra}<extra></extra>",
        ))
    fig.update_layout(title="kept fraction per layer", height=max(300, 120 + 24 * len(rows)),
                      barmode="overlay")
    fig.update_xaxes(title_text="kept fraction", range=[0, 1.05], tickformat=".0%")
    fig.update_yaxes(title_text="layer", type="category", categoryorder="array",
                     categoryarray=names, autorange="reversed")
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
    fig.update_layout(title=f"parameters by layer type ({total:,} in total)")
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


def memory_figure(rows: Sequence[Mapping]) -> go.Figure:
    """Grouped bars of weight memory per storage format for each layer (or model).

    Args:
        rows: dicts with ``name``, ``dense_bytes``, ``bitmask_bytes``, ``csr_bytes`` and
            optionally ``nm_bytes`` (None where N:M storage does not apply).

    Returns:
        A figure with one ``Bar`` trace per format (dense, bitmask, CSR, then N:M when any row
        has it), y in MB (1 MB = 2**20 bytes).

    Raises:
        ValueError: not a list of dicts, a missing key, or a negative/non-numeric size.
    """
    rows = _check_rows(rows, ("name", "dense_bytes", "bitmask_bytes", "csr_bytes"), "rows")
    if not rows:
        return _empty("weight memory per storage format", "no layers to show")
    names = [str(r["name"]) for r in rows]
    fig = go.Figure()
    for label, key in _FORMATS:
        values: list[float | None] = []
        for i, r in enumerate(rows):
            raw = r.get(key)
            values.append(None if raw is None else _number(raw, f"rows[{i}][{key!r}]") / _BYTES_PER_MB)
        if all(v is None for v in values):
            continue  # only N:M may be absent, and then it has nothing to draw
        fig.add_trace(go.Bar(
            x=names, y=values, name=label,
            hovertemplate=f"%{{x}}<br>{label}: %{{y:.3f}} MB<extra></extra>",
        ))
    fig.update_layout(title="weight memory per storage format", barmode="group")
    fig.update_xaxes(title_text="layer", type="category")
    fig.update_yaxes(title_text="weight memory (MB)", rangemode="tozero")
    return fig


# ---------------------------------------------------------------------------------------------
# Kernel benchmarks (sparsekit.bench results)


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 tick values covering [lo, hi] (for readable log axes; plotly's minor labels repeat
    bare digits such as "2 5 2 5")."""
    if not (lo > 0 and hi > 0):
        raise ValueError("log ticks need positive bounds")
    lo, hi = min(lo, hi), max(lo, hi)
    out = []
    for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if lo / 1.0001 <= v * 2.5 and v / 2.5 <= hi * 1.0001:  # one step beyond each end
                out.append(float(f"{v:.6g}"))
    return out


def _ratio_text(v: float) -> str:
    return f"{v:g}×"


def _pct_text(v: float) -> str:
    return f"{v * 100:g}%"


def _log_axis(values: Sequence[float], fmt) -> dict:
    ticks = log_ticks(min(values), max(values))
    return dict(type="log", tickvals=ticks, ticktext=[fmt(t) for t in ticks])


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


# ----------------------------------------------------------------------------- training & topology
# Figures of the Training & topology page. Inputs are plain lists/arrays (from
# ``sparsekit.training.RunRecord`` and ``sparsekit.topology.SadReport``), so a notebook can build them too.

_SAD_TITLES = {
    "interval": "SAD between consecutive snapshots",
    "cumulative": "cumulative SAD (sum of the interval SADs)",
    "from_first": "SAD from the first snapshot",
    "to_final": "SAD to the final snapshot",
}


def training_curves_figure(runs: Sequence[Mapping]) -> go.Figure:
    """Held-out accuracy and loss per epoch of one or more runs, side by side.

    Args:
        runs: dicts with ``label`` and equal-length lists ``epoch``, ``test_accuracy`` (%),
            ``train_loss`` and ``test_loss``.

    Returns:
        A two-panel figure: per run, one accuracy trace (left), then a test-loss trace (solid) and a
        train-loss trace (dotted) on the right.

    Raises:
        ValueError: not a list of dicts, a missing key, or lists of different lengths.
    """
    runs = _check_rows(runs, ("label", "epoch", "test_accuracy", "train_loss", "test_loss"), "runs")
    if not runs:
        return _empty("accuracy and loss", "no runs to show")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("held-out accuracy (%)",
                                                        "cross-entropy (solid: held-out, dotted: train)"))
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
    for i, run in enumerate(runs):
        n = len(run["epoch"])
        if any(len(run[k]) != n for k in ("test_accuracy", "train_loss", "test_loss")):
            raise ValueError(f"runs[{i}] has lists of different lengths")
        color, label = palette[i % len(palette)], str(run["label"])
        fig.add_trace(go.Scatter(x=list(run["epoch"]), y=list(run["test_accuracy"]), name=label, legendgroup=label,
                                 mode="lines+markers", line=dict(color=color),
                                 hovertemplate=f"{label}<br>epoch %{{x:.2f}}<br>accuracy %{{y:.2f}}%<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=list(run["epoch"]), y=list(run["test_loss"]), name=f"{label} (test)",
                                 legendgroup=label, showlegend=False, mode="lines", line=dict(color=color),
                                 hovertemplate=f"{label}<br>epoch %{{x:.2f}}<br>test loss %{{y:.4f}}<extra></extra>"),
                      row=1, col=2)
        fig.add_trace(go.Scatter(x=list(run["epoch"]), y=list(run["train_loss"]), name=f"{label} (train)",
                                 legendgroup=label, showlegend=False, mode="lines",
                                 line=dict(color=color, dash="dot"),
                                 hovertemplate=f"{label}<br>epoch %{{x:.2f}}<br>train loss %{{y:.4f}}<extra></extra>"),
                      row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
    fig.update_yaxes(title_text="loss", type="log", row=1, col=2)
    fig.update_layout(title="accuracy and loss", legend=dict(orientation="h", y=-0.25))
    return fig


def sad_series_figure(runs: Sequence[Mapping], *, kind: str = "interval", fraction: bool = False,
                      log_y: bool | None = None) -> go.Figure:
    """SAD over training for one or more runs (one line each).

    Args:
        runs: dicts with ``label``, ``epoch`` (snapshot positions in epochs) and ``sad`` (one value per
            snapshot; for ``interval`` the value at snapshot i covers the interval ending there, and
            the first snapshot's 0 is not drawn).
        kind: which series it is: ``interval``, ``cumulative``, ``from_first`` or ``to_final``.
        fraction: whether the values are fractions of the weights (axis in %) or raw counts.
        log_y: log y axis; default True for ``interval``. Zeros cannot sit on a log axis, so they
            are left out there (a gap), and a note says how many.

    Returns:
        A figure with one ``Scatter`` per run.

    Raises:
        ValueError: unknown kind, not a list of dicts, a missing key, or lists of different lengths.
    """
    if kind not in _SAD_TITLES:
        raise ValueError(f"kind must be one of {', '.join(_SAD_TITLES)}, got {kind!r}")
    runs = _check_rows(runs, ("label", "epoch", "sad"), "runs")
    title = _SAD_TITLES[kind] + (" (fraction of weights)" if fraction else " (weights)")
    if not runs:
        return _empty(title, "no runs to show")
    log_y = (kind == "interval") if log_y is None else bool(log_y)
    fig = go.Figure()
    hidden = 0
    for i, run in enumerate(runs):
        x = [float(v) for v in run["epoch"]]
        y = [float(v) for v in run["sad"]]
        if len(x) != len(y):
            raise ValueError(f"runs[{i}] has {len(x)} positions but {len(y)} SAD values")
        if kind == "interval":
            x, y = x[1:], y[1:]
        if log_y:
            hidden += sum(1 for v in y if v <= 0)
            y = [v if v > 0 else None for v in y]
        label = str(run["label"])
        value = "%{y:.3%}" if fraction else "%{y:,.0f} weights"
        fig.add_trace(go.Scatter(x=x, y=y, name=label, mode="lines+markers", connectgaps=False,
                                 hovertemplate=f"{label}<br>epoch %{{x:.2f}}<br>SAD {value}<extra></extra>"))
    fig.update_layout(title=title, legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(title_text="epoch" + (" (end of interval)" if kind == "interval" else ""))
    # One tick per decade on a log axis: plotly's default labels the 2s and 5s between decades too.
    fig.update_yaxes(title_text="SAD" + (" (% of weights)" if fraction else " (weights)"),
                     type="log" if log_y else "linear", dtick=1 if log_y else None,
                     tickformat="~%" if fraction else None)
    if hidden:
        fig.add_annotation(text=f"{hidden} zero value(s) not drawn on the log axis", showarrow=False,
                           x=1, y=1.02, xref="paper", yref="paper", xanchor="right", font=dict(size=11))
    return fig


def sad_heatmap_figure(layers: Sequence[str], epochs: Sequence[float], values: Any, *,
                       fraction: bool = True, title: str = "SAD per layer and interval") -> go.Figure:
    """Layer × time heatmap of interval SAD.

    Args:
        layers: row labels, in model order (top to bottom).
        epochs: the snapshot positions; column i is the interval ending at ``epochs[i]`` (the first
            snapshot's column is dropped).
        values: ``[layers, snapshots]`` array (``SadReport.matrix``).
        fraction: values are fractions of each layer's weights (colour scale in %) or raw counts.
        title: figure title.

    Returns:
        A figure with one ``Heatmap``.

    Raises:
        ValueError: shapes that do not match the labels.
    """
    z = np.asarray(values, dtype=np.float64)
    if z.ndim != 2 or z.shape != (len(layers), len(epochs)):
        raise ValueError(f"values must be [{len(layers)} layers, {len(epochs)} snapshots], got {z.shape}")
    if z.shape[1] < 2 or not len(layers):
        return _empty(title, "at least two snapshots of a sparse layer are needed")
    fig = go.Figure(go.Heatmap(
        z=z[:, 1:].astype(np.float32), x=[float(e) for e in epochs[1:]], y=[str(n) for n in layers],
        colorscale="Viridis", colorbar=dict(title=dict(text="SAD" + (" (fraction)" if fraction else ""))),
        hovertemplate="%{y}<br>interval ending at epoch %{x:.2f}<br>SAD "
                      + ("%{z:.3%}" if fraction else "%{z:,.0f}") + "<extra></extra>",
    ))
    fig.update_layout(title=title, height=max(280, 140 + 28 * len(layers)))
    fig.update_xaxes(title_text="epoch (end of interval)")
    fig.update_yaxes(title_text="layer", type="category", autorange="reversed")
    return fig


def flip_count_figure(counts: Any, *, title: str = "flips per weight",
                      max_cells: int = DEFAULT_MAX_CELLS) -> go.Figure:
    """Heatmap of how often each weight changed keep/prune state (one layer, as a matrix).

    Args:
        counts: 2-D array of flip counts, rows = output units, columns = N:M groups' entries in order
            (``sparsekit.topology.matrix_view`` of ``flip_counts``).
        title: figure title.
        max_cells: most cells sent; a larger matrix is averaged over square tiles (the title says so).

    Returns:
        A figure with one ``Heatmap`` (exact counts when the matrix fits).

    Raises:
        ValueError: not a 2-D array, or negative counts.
    """
    c = torch.as_tensor(np.asarray(counts), dtype=torch.float32)
    if c.dim() != 2:
        raise ValueError(f"counts must be a 2-D matrix, got shape {tuple(c.shape)}")
    if c.numel() and float(c.min()) < 0:
        raise ValueError("flip counts cannot be negative")
    rows, cols = c.shape
    tile = 1
    if rows * cols > max_cells:
        tile = math.ceil(math.sqrt(rows * cols / max_cells))
        c = torch.nn.functional.avg_pool2d(c[None, None], tile, ceil_mode=True, count_include_pad=False)[0, 0]
        title = f"{title} (mean over {tile}×{tile} tiles)"
    what = "flips" if tile == 1 else "mean flips"
    fig = go.Figure(go.Heatmap(
        z=c.numpy(), x=[j * tile for j in range(c.shape[1])], y=[i * tile for i in range(c.shape[0])],
        colorscale="Magma", reversescale=True, zmin=0, colorbar=dict(title=dict(text=what)),
        hovertemplate="row %{y}, column %{x}<br>" + what + ": %{z:.3g}<extra></extra>",
    ))
    fig.update_layout(title=title)
    _matrix_axes(fig)
    return fig


# ----------------------------------------------------------------------------- attention sparsity (issue 3)
# Figures for sparsekit.attention: a head's attention with a pattern drawn over it, layer x head
# grids (recall, density, the per-head plan), and the search's density/recall trade-off.

ATTENTION_FAMILY_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
)


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
        dropped, None where kept) drawn half-transparent grey on top.

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
    fig.update_layout(title=title, height=min(900, 260 + 9 * q_len))
    fig.update_xaxes(title_text="key", type="category", tickangle=-60, showgrid=False)
    fig.update_yaxes(title_text="query", type="category", autorange="reversed", showgrid=False)
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


def plan_grid_figure(families: Sequence[Sequence[str]], labels: Sequence[Sequence[str]], recall: Any,
                     density: Any, *, title: str = "per-head plan") -> go.Figure:
    """The per-head plan: each cell coloured by the chosen pattern family, hover with the exact
    pattern, its recall and density.

    Args:
        families: ``[layers][heads]`` family names (``"dense"`` for a dense head).
        labels: ``[layers][heads]`` exact pattern labels.
        recall: ``[layers, heads]`` recall of each choice.
        density: ``[layers, heads]`` density of each choice.
        title: figure title.

    Returns:
        A figure with one Heatmap whose ``z`` is the family index + 0.5 (``customdata`` holds
        the label, recall and density of each cell, ``text`` the recall) and one legend entry
        (an empty Scatter) per family, in order of first appearance.
    """
    r = _attn_matrix(recall, "recall").astype(np.float64)
    d = _attn_matrix(density, "density").astype(np.float64)
    n_layers, n_heads = r.shape
    if len(families) != n_layers or any(len(row) != n_heads for row in families):
        raise ValueError("families must be [layers][heads] like recall")
    names = list(dict.fromkeys(f for row in families for f in row))
    index = {f: i for i, f in enumerate(names)}
    z = np.array([[index[f] for f in row] for row in families], dtype=np.float32)
    colors = [ATTENTION_FAMILY_COLORS[i % len(ATTENTION_FAMILY_COLORS)] for i in range(len(names))]
    k = max(len(names), 1)
    # A stepped colour scale: family i owns the band [i/k, (i+1)/k].
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / k, c], [(i + 1) / k, c]]
    custom = np.empty((n_layers, n_heads, 3), dtype=object)
    for layer in range(n_layers):
        for head in range(n_heads):
            custom[layer, head] = (labels[layer][head], f"{r[layer, head]:.3f}", f"{d[layer, head]:.3f}")
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


def search_tradeoff_figure(candidates: Sequence[Mapping], plan: Mapping, uniform: Mapping) -> go.Figure:
    """Mean density vs mean recall of every searched candidate used uniformly, with the per-head
    plan and the chosen uniform baseline marked.

    Args:
        candidates: dicts with ``label``, ``density`` and ``recall`` (means over heads).
        plan: dict with ``density`` and ``recall`` of the per-head plan.
        uniform: dict with ``label``, ``density`` and ``recall`` of the uniform baseline.

    Returns:
        ``data[0]`` the candidates, ``data[1]`` the plan, ``data[2]`` the uniform baseline.
    """
    rows = _check_rows(candidates, ("label", "density", "recall"), "candidates")
    fig = go.Figure([
        go.Scatter(x=[_number(r["density"], "density", 0, 1) for r in rows],
                   y=[_number(r["recall"], "recall", 0, 1) for r in rows], mode="markers",
                   name="one pattern for every head", marker=dict(color=PRUNED_COLOR, size=7),
                   text=[str(r["label"]) for r in rows],
                   hovertemplate="%{text}<br>density %{x:.3f}, recall %{y:.3f}<extra></extra>"),
        go.Scatter(x=[_number(plan["density"], "plan density", 0, 1)], y=[_number(plan["recall"], "plan recall", 0, 1)],
                   mode="markers", name="per-head plan", marker=dict(color="#d62728", size=14, symbol="star"),
                   hovertemplate="per-head plan<br>density %{x:.3f}, recall %{y:.3f}<extra></extra>"),
        go.Scatter(x=[_number(uniform["density"], "uniform density", 0, 1)],
                   y=[_number(uniform["recall"], "uniform recall", 0, 1)], mode="markers",
                   name=f"uniform: {uniform.get('label', '')}", marker=dict(color=KEPT_COLOR, size=12, symbol="diamond"),
                   hovertemplate="uniform baseline<br>density %{x:.3f}, recall %{y:.3f}<extra></extra>"),
    ])
    fig.update_layout(title="recall vs density on the calibration inputs (means over heads)")
    fig.update_xaxes(title_text="density (share of attention pairs kept)", range=[0, 1.02])
    fig.update_yaxes(title_text="attention recall", range=[0, 1.02])
    return fig


# ---------------------------------------------------------------------------------------------
# Method comparison and attribution drift (sparsekit.compare, sparsekit.attribution)

METHOD_COLORS = {
    "dense": "#000000", "magnitude": "#1f77b4", "wanda": "#2ca02c", "sparsegpt": "#d62728",
    "taylor": "#9467bd", "random": "#7f7f7f", "magnitude+perm": "#17becf",
}
_FAMILY_SYMBOLS = {"N:M": "diamond", "unstructured": "circle", "dense": "star"}


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


# ----------------------------------------------------------------------------- seed studies

STUDY_COLORS = {"ste": "#ff7f0e", "srste": "#1f77b4"}


def _ci_error(intervals) -> dict:
    hi = [0.0 if math.isnan(iv.high) else iv.high - iv.mean for iv in intervals]
    lo = [0.0 if math.isnan(iv.low) else iv.mean - iv.low for iv in intervals]
    return {"type": "data", "symmetric": False, "array": hi, "arrayminus": lo, "thickness": 1.5, "width": 6}


def seed_study_figure(result, metric: str = "late_sad_pct") -> go.Figure:
    """Per-seed values of one metric for STE and SR-STE at each pattern: dots joined by seed (the
    pairing), and each method's mean with its confidence interval.

    Args:
        result: a ``sparsekit.seedstudy.SeedStudyResult``.
        metric: a key of ``sparsekit.seedstudy.METRICS``.
    """
    from .seedstudy import METRICS

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    name, unit, definition = METRICS[metric]
    fig = go.Figure()
    lam = result.config.lambda_w
    rows = {(r.n, r.m, r.method): r for r in result.summary()}
    for n, m in result.config.patterns:
        ste = result.values("ste", n, m, 0.0, metric)
        sr = result.values("srste", n, m, lam, metric)
        xs = (f"{n}:{m} STE", f"{n}:{m} SR-STE")
        for seed in [s for s in ste if s in sr]:
            fig.add_trace(go.Scatter(x=list(xs), y=[ste[seed], sr[seed]], mode="lines+markers",
                                     line={"color": "rgba(120,120,120,0.35)", "width": 1},
                                     marker={"size": 5, "color": "rgba(120,120,120,0.6)"}, showlegend=False,
                                     hovertemplate=f"seed {seed}<br>%{{x}}: %{{y:.3g}}<extra></extra>"))
        for method, x in zip(("ste", "srste"), xs):
            iv = rows[(n, m, method)].metrics[metric]
            fig.add_trace(go.Scatter(
                x=[x], y=[iv.mean], mode="markers", marker={"size": 13, "color": STUDY_COLORS[method],
                                                            "symbol": "diamond"},
                error_y=_ci_error([iv]), name="STE" if method == "ste" else f"SR-STE (λ_w={lam:g})",
                legendgroup=method, showlegend=(n, m) == result.config.patterns[0],
                hovertemplate=f"{x}<br>mean %{{y:.3g}} {unit}<br>{iv.confidence:.0%} CI "
                              f"[{iv.low:.3g}, {iv.high:.3g}]<br>{iv.n} seeds<extra></extra>"))
    fig.update_layout(title=f"{name} over {result.config.seeds} seeds (grey: one seed, paired; diamond: mean "
                            f"with {result.config.confidence:.0%} CI)",
                      yaxis_title=f"{name} ({unit})", xaxis_title=definition, height=420,
                      legend={"orientation": "h", "y": -0.25})
    return fig


def paired_difference_figure(result, metrics: Sequence[str] = ("late_sad_pct", "late_flipped_pct", "accuracy")
                             ) -> go.Figure:
    """SR-STE − STE per pattern, one panel per metric: the mean paired difference with its interval,
    and a zero line (an interval crossing it shows no difference)."""
    from .seedstudy import METRICS

    comps = {(c.n, c.m, c.metric): c for c in result.comparisons()}
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[METRICS[k][0] for k in metrics])
    for col, metric in enumerate(metrics, start=1):
        labels, intervals = [], []
        for n, m in result.config.patterns:
            c = comps[(n, m, metric)]
            labels.append(f"{n}:{m}<br>SR-STE lower {c.paired.a_lower}/{c.paired.n}")
            intervals.append(c.paired.diff)
        colors = ["#7f7f7f" if iv.includes_zero else ("#2ca02c" if (iv.mean < 0) == (metric != "accuracy")
                                                        else "#d62728") for iv in intervals]
        fig.add_trace(go.Scatter(x=labels, y=[iv.mean for iv in intervals], mode="markers",
                                 marker={"size": 11, "color": colors},
                                 error_y=_ci_error(intervals), showlegend=False,
                                 hovertemplate="%{x}: %{y:+.3g} pp<extra></extra>"), row=1, col=col)
        fig.add_hline(y=0, line={"color": "black", "width": 1, "dash": "dot"}, row=1, col=col)
        fig.update_yaxes(title_text="SR-STE − STE (pp)" if col == 1 else None, row=1, col=col)
    fig.update_layout(title=f"Paired difference SR-STE − STE, mean and {result.config.confidence:.0%} CI "
                            "(grey: interval includes 0)", height=380)
    return fig


def lambda_sweep_figure(result) -> go.Figure:
    """Late SAD and final accuracy against SR-STE's λ_w (λ_w = 0 is STE), means with intervals."""
    rows = result.lambda_rows()
    if not rows:
        return _empty("λ_w sweep", "this study has no λ_w sweep")
    n, m = result.config.patterns[0]
    labels = [("0 (STE)" if r.lambda_w == 0 else f"{r.lambda_w:g}") for r in rows]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("late SAD (% of sparse weights)", "final accuracy (%)"))
    for col, metric in enumerate(("late_sad_pct", "accuracy"), start=1):
        ivs = [r.metrics[metric] for r in rows]
        fig.add_trace(go.Scatter(x=labels, y=[iv.mean for iv in ivs], mode="lines+markers", error_y=_ci_error(ivs),
                                 marker={"size": 9, "color": STUDY_COLORS["srste"]}, showlegend=False,
                                 hovertemplate="λ_w %{x}: %{y:.3g}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="λ_w", type="category", row=1, col=col)
    fig.update_layout(title=f"SR-STE's λ_w at {n}:{m}, {result.config.seeds} seeds, mean and "
                            f"{result.config.confidence:.0%} CI", height=380)
    return fig
