"""Figures of one layer's mask: heatmap, zoom, N:M groups and their patterns, |w| histogram,
density profile, diff.

The numbers come from ``sparsekit.maskstats``, so a notebook can reproduce any figure's data without
plotly. Heatmaps never carry more than ``max_cells`` cells and are sent as float32, so a large layer
stays light in the browser. No figure sets a background colour: the app's theme (light or dark)
or plotly's template decides it.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .. import maskstats as ms
from ..maskstats import DEFAULT_MAX_CELLS
from ..maskstats.inputs import TensorLike
from ._style import DIFF_COLORS, KEPT_COLOR, PRUNED_COLOR, _matrix_axes, _percent

TEXT_CELLS_MAX = 20
"""Largest zoom block side that gets the weight value written in each cell."""
GROUP_LINE = dict(color="#555555", width=2)
"""N:M group boundaries in the zoom: dark enough over the coloured cells, visible on both themes."""
PROFILE_HEIGHT, PROFILE_MARGIN_T, PROFILE_MARGIN_B, PROFILE_SPACING = 560, 80, 60, 0.28
"""Density profile layout: 0.28 of the 420 px plot height leaves about 118 px between the panels."""


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


def mask_heatmap(mask: TensorLike, *, max_cells: int = DEFAULT_MAX_CELLS, title: str | None = None,
                 m: int | None = None) -> go.Figure:
    """Heatmap of a mask's kept fraction per tile (exact cells when the mask is small).

    Args:
        mask: bool tensor (True = kept), 2-D or a conv mask (shown as ``[out, in*kh*kw]``).
        max_cells: most heatmap cells sent to the browser.
        title: figure title; by default it names the tile size, the shape and the kept share.
        m: N:M group size: the column axis gets a minor tick at every group start and, when the
            cells are exact and there are at most ``MAX_GROUP_LINES`` groups, a line between groups.

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
    _square_cells(fig)
    if m is not None:
        _group_marks(fig, m, cols, exact=grid.tile_cols == 1, rows=rows)
    return fig


MAX_GROUP_LINES = 64
"""Most N:M group lines drawn on an overview heatmap (more would hide the cells; ticks mark them then)."""


def _square_cells(fig: go.Figure) -> None:
    # One matrix cell is square on screen: a 384×384 mask is drawn square, a 384×1536 one 4× wider.
    fig.update_yaxes(scaleanchor="x", scaleratio=1, constrain="domain")
    fig.update_xaxes(constrain="domain")


def _group_marks(fig: go.Figure, m: int, cols: int, *, exact: bool, rows: int) -> None:
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m must be a positive integer group size, got {m!r}")
    fig.update_xaxes(minor=dict(tick0=-0.5 if exact else 0, dtick=int(m), ticks="outside", ticklen=5,
                                showgrid=False))
    if exact and cols // m <= MAX_GROUP_LINES:
        for k in range(1, -(-cols // m)):
            fig.add_shape(type="line", x0=k * m - 0.5, x1=k * m - 0.5, y0=-0.5, y1=rows - 0.5,
                          line=dict(color="rgba(255,255,255,0.6)", width=1), layer="above")
    fig.update_layout(title=dict(text=f"{fig.layout.title.text}<br><sup>ticks on the column axis mark the "
                                      f"groups of {m}</sup>"))


def mask_zoom_figure(weight: TensorLike, mask: TensorLike, row0: int, col0: int, rows: int = 32,
                     cols: int = 32, *, m: int | None = None) -> go.Figure:
    """Exact cells of a weight block: kept weights coloured by value, pruned ones grey.

    Args:
        weight: ``[out, in]`` weight or a conv weight (shown as ``[out, in*kh*kw]``).
        mask: bool tensor of the same shape (True = kept).
        row0: first row of the block.
        col0: first column of the block.
        rows: block height, 1..64 (clipped at the matrix edge).
        cols: block width, 1..64 (clipped at the matrix edge).
        m: N:M group size: a line is drawn before every column that starts a group (columns that
            are multiples of ``m``; pass a matrix whose groups run along the rows). None: no lines.

    Returns:
        A figure with two heatmaps on the same cells: ``data[0]`` the kept weights (pruned
        cells NaN; diverging colours centred at 0), ``data[1]`` the pruned cells in grey. Blocks
        up to 20×20 also print each value (3 significant digits). With ``m``, one vertical line
        shape per group boundary inside the block.

    Raises:
        ValueError: as ``maskstats.zoom``, or ``m`` below 2.
    """
    if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 2):
        raise ValueError(f"m must be None or an integer of at least 2, got {m!r}")
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
    groups = ""
    if m is not None:
        groups = f"; lines every {m} columns mark the N:M groups"
        for c in range(block.col0 + 1, c1 + 1):
            if c % m == 0:
                fig.add_shape(type="line", x0=c - 0.5, x1=c - 0.5, y0=block.row0 - 0.5, y1=r1 + 0.5,
                              line=GROUP_LINE, layer="above")
    fig.update_layout(
        title=(f"weights in rows {block.row0}–{r1}, columns {block.col0}–{c1}<br>"
               f"<sup>{int(kept.sum())} of {kept.size} kept; grey = pruned{groups}</sup>"),
    )
    _matrix_axes(fig)
    # Cells wide enough for their printed value; the height follows the number of rows.
    fig.update_xaxes(range=[block.col0 - 0.5, c1 + 0.5])
    fig.update_yaxes(range=[r1 + 0.5, block.row0 - 0.5], autorange=False)
    fig.update_layout(height=int(min(900, max(320, 30 * w.shape[0] + 140))))
    return fig


def nm_group_figure(weight: TensorLike, mask: TensorLike, m: int, row: int, start_group: int = 0,
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
    traces: dict[bool, tuple[list[str], list[float], list[list[float]]]] = {True: ([], [], []), False: ([], [], [])}
    for g in groups:
        for col, w, a, kept in zip(g["columns"], g["weight"], g["abs_weight"], g["kept"]):
            order.append(str(col))
            xs, ys, custom = traces[bool(kept)]
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
        # On a category axis, category i sits at x = i, so boundaries fall on k*m - 0.5, in the
        # gap between two bars; drawn below the bars so they never cross one.
        fig.add_vline(x=k * m - 0.5, line_dash="dot", line_color="#888888", line_width=1, layer="below")
    if len(groups) <= 16:
        # Two short lines per group (index, kept/M), small enough for a group as narrow as M bars.
        for k, g in enumerate(groups):
            fig.add_annotation(x=k * m + (m - 1) / 2, y=1.0, yref="paper", yanchor="bottom",
                               showarrow=False, font=dict(size=10),
                               text=f"g{g['group']}<br>{g['n_kept']}/{m}")
    kept_counts = {g["n_kept"] for g in groups}
    rule = f"{kept_counts.pop()} of every {m} kept" if len(kept_counts) == 1 else f"groups of {m}"
    first, last = groups[0]["group"], groups[-1]["group"]
    fig.update_layout(
        title=dict(text=f"|w| in row {row}, groups {first}–{last}<br><sup>{rule}; above each group: "
                        f"g index, kept/{m}</sup>", y=0.97, yanchor="top"),
        barmode="overlay",
        bargap=0.25,
        margin=dict(t=120, b=60),
        legend=dict(orientation="h", yanchor="top", y=-0.22, x=0.5, xanchor="center"),
    )
    fig.update_xaxes(title_text="input feature (column index)", type="category",
                     categoryorder="array", categoryarray=order)
    fig.update_yaxes(title_text="|weight|", rangemode="tozero")
    return fig


def magnitude_histogram(weight: TensorLike, mask: TensorLike, bins: int = 80, *, log_y: bool = False) -> go.Figure:
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


def density_profile(mask: TensorLike) -> go.Figure:
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
    # Fixed height and margins, so the gap between the panels is known in pixels: room for the
    # upper panel's tick labels and axis title, then the lower panel's title above it.
    fig = make_subplots(rows=2, cols=1, vertical_spacing=PROFILE_SPACING, subplot_titles=(
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
                      showlegend=False, height=PROFILE_HEIGHT,
                      margin=dict(t=PROFILE_MARGIN_T, b=PROFILE_MARGIN_B))
    return fig


def nm_pattern_figure(mask: TensorLike, m: int, *, dim: int = -1) -> go.Figure:
    """How many N:M groups kept each pattern of positions, over the whole layer.

    Args:
        mask: bool tensor (True = kept); a Linear mask, a grouped matrix view, or a conv mask with
            ``dim=1`` (see ``maskstats.pattern_histogram``).
        m: group size M.
        dim: the dim groups run along.

    Returns:
        A bar chart: ``data[0]`` x = pattern (``1100`` = positions 0 and 1 kept), y = number of
        groups; a dotted line at the count every pattern would have if all were equally used.

    Raises:
        ValueError: as ``maskstats.pattern_histogram``.
    """
    hist = ms.pattern_histogram(mask, m, dim=dim)
    share = hist.counts / max(hist.groups, 1)
    fig = go.Figure(go.Bar(
        x=hist.patterns, y=hist.counts, marker_color=KEPT_COLOR, customdata=share,
        hovertemplate="pattern %{x}<br>%{y:,} groups (%{customdata:.1%})<extra></extra>",
    ))
    used = int((hist.counts > 0).sum())
    listed = f"{used} of {len(hist.patterns)} possible patterns used" if hist.complete else f"{used} patterns used"
    if hist.complete and len(hist.patterns) > 1:
        fig.add_hline(y=hist.groups / len(hist.patterns), line_dash="dot", line_color="#888888",
                      annotation_text="all equally used", annotation_position="top left")
    fig.update_layout(title=f"kept positions per group of {hist.m} — {hist.groups:,} groups, {listed}",
                      bargap=0.2)
    fig.update_xaxes(title_text="pattern (1 = kept, position 0 first)", type="category",
                     tickangle=-90 if len(hist.patterns) > 12 else 0)
    fig.update_yaxes(title_text="number of groups", rangemode="tozero")
    return fig


def mask_diff_figure(mask_a: TensorLike, mask_b: TensorLike, *, labels: tuple[str, str] = ("A", "B"),
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
    _square_cells(fig)  # a 384×384 layer square, as on the overview
    return fig
