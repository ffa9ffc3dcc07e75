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
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
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
    fig.update_xaxes(type="log")
    return fig
