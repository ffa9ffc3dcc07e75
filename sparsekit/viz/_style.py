"""What every figure area shares: colours, the empty-figure note, number text and log-axis ticks."""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import plotly.graph_objects as go

from ..config import NM_PRESETS

KEPT_COLOR = "#1f77b4"
PRUNED_COLOR = "#b0b0b0"
SKIPPED_COLOR = "#b0b0b0"
# Both-pruned light, both-kept dark, the two kinds of disagreement in contrasting hues.
DIFF_COLORS = ("#ececec", "#d62728", "#1f77b4", "#4d4d4d")
_BYTES_PER_MB = 2**20  # the project's MB (see sparsekit.models.base)


def _empty(title: str, note: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False)
    fig.add_annotation(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


def _percent(fraction: float) -> str:
    # Three significant digits so a tiny but non-zero change never prints as 0.00%.
    return "0%" if fraction == 0 else f"{100 * fraction:.3g}%"


def _matrix_axes(fig: go.Figure) -> None:
    fig.update_xaxes(title_text="input feature (column index)")
    # Row 0 at the top, as in the matrix.
    fig.update_yaxes(title_text="output unit (row index)", autorange="reversed")


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 tick values covering [lo, hi] (for readable log axes; plotly's minor labels repeat
    bare digits such as "2 5 2 5").

    Args:
        lo: one end of the range (> 0).
        hi: the other end (> 0).

    Returns:
        Ascending tick values, one 1-2-5 step beyond each end.

    Raises:
        ValueError: a bound that is not positive.
    """
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


def _log_axis(values: Sequence[float], fmt: Callable[[float], str]) -> dict[str, Any]:
    ticks = log_ticks(min(values), max(values))
    return dict(type="log", tickvals=ticks, ticktext=[fmt(t) for t in ticks])


RUN_COLORS = ("#2f6fd6", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#a6a30f", "#12b5c4", "#e05cb8")
"""One colour per run or series, eight hues at least 28° apart (blue, orange, green, red, purple,
olive, cyan, pink), dark enough for a light and light enough for a dark background."""
FLIP_COLORSCALE = ((0.0, "#f0f0f0"), (0.15, "#fdd49e"), (0.4, "#fc8d59"), (0.7, "#d7301f"), (1.0, "#7f0000"))
"""Sequential scale for counts: 0 a light neutral grey, larger counts darker and redder
(luminance falls along the scale, so it reads the same way in a light and a dark theme)."""


METHOD_COLORS = {
    "dense": "#888888", "magnitude": "#1f77b4", "wanda": "#2ca02c", "sparsegpt": "#d62728",
    "taylor": "#9467bd", "random": "#1b9e77", "magnitude+perm": "#17becf",
    # Sparse training and recovery: the same method keeps its colour on every page.
    "ste": "#ff7f0e", "srste": "#a6a30f", "gradual": "#e05cb8", "fixed": "#8c564b",
}
"""One colour per method on every page (one-shot methods, the training methods and the recovery
modes); mid-grey for dense so its line shows on light and dark themes. Random (one-shot pruning,
and the fixed random mask of training) is teal, not a second grey beside dense."""
MODE_COLORS = {mode: METHOD_COLORS[mode] for mode in ("fixed", "ste", "srste")}
"""One colour per recovery mode (fixed mask, STE, SR-STE), the same in every view of the Recovery page."""
EXTRA_COLORS = ("#393b79", "#bd9e39", "#ad494a", "#5254a3", "#8ca252", "#e7969c", "#637939", "#7b4173")
"""Colours of methods that ``METHOD_COLORS`` does not name (a method registered later), picked by name."""
SHADE_LEVELS = (0.0, -0.3, 0.35, -0.5, 0.55, -0.15, 0.2, 0.7)
"""How the runs of one method are told apart: the first keeps the method's colour, the next ones are
mixed towards black (negative) or white (positive) by these shares, alternately darker and lighter."""
ZERO_COLORSCALE = ((0.0, "#f0f0f0"), (1.0, "#f0f0f0"))
"""The flat light grey of a heatmap whose values are all zero (drawn over 0…1 so it reads as zero)."""


def color_map(keys: Sequence[str], palette: Sequence[str] = RUN_COLORS) -> dict[str, str]:
    """One colour per distinct key, in first-seen order (cycling through ``palette`` past its end).

    Args:
        keys: the series' keys (e.g. run ids).
        palette: the colours to hand out.

    Returns:
        key -> colour.
    """
    out: dict[str, str] = {}
    for key in keys:
        if key not in out:
            out[key] = palette[len(out) % len(palette)]
    return out


def method_color(method: str) -> str:
    """The colour of a method (``METHOD_COLORS``); a method it does not name gets one of ``EXTRA_COLORS``
    chosen by its name (the same on every page and in every process)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return EXTRA_COLORS[zlib.crc32(str(method).encode()) % len(EXTRA_COLORS)]


def shade(color: str, level: float) -> str:
    """``color`` (``#rrggbb``) mixed towards white (``level`` > 0) or black (< 0) by ``|level|``."""
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    if not -1 <= level <= 1:
        raise ValueError(f"a shade level is between -1 and 1, got {level}")
    target = 255 if level > 0 else 0
    return "#" + "".join(f"{round(v + (target - v) * abs(level)):02x}" for v in rgb)


def method_colors(items: Iterable[tuple[str, str, int]]) -> dict[str, str]:
    """One colour per series, a function of its method: every series of a method in a shade of the
    method's colour (``method_color``), the shade the series prefers (``SHADE_LEVELS[level]``, level 0
    the method's colour itself). Series of one method that prefer the same shade are told apart: in
    order of (level, key), each takes the first shade not yet taken. So a series keeps its colour in
    every figure, in any order, beside any other method, and beside other series of its own method
    unless two of them meet on one shade.

    Args:
        items: ``(key, method, level)`` per series: key as the figures look it up (a run id), the
            method (or recovery mode), and the preferred shade (``shade_level`` of a run).

    Returns:
        key -> colour.
    """
    by_method: dict[str, dict[str, int]] = {}
    for key, method, level in items:
        by_method.setdefault(str(method), {}).setdefault(key, int(level))
    out: dict[str, str] = {}
    count = len(SHADE_LEVELS)
    for method, levels in by_method.items():
        base = method_color(method)
        taken: set[int] = set()
        for key in sorted(levels, key=lambda k: (levels[k], k)):  # noqa: B023 (used at once)
            want = levels[key] % count
            free = [(want + step) % count for step in range(count) if (want + step) % count not in taken]
            level = free[0] if free else want  # more runs of one method than shades: shades repeat
            taken.add(level)
            out[key] = shade(base, SHADE_LEVELS[level])
    return out


def shade_level(run: Any) -> int:
    """The shade a run prefers among the runs of its method (index into ``SHADE_LEVELS``), a function of
    the run alone, so that it has one colour in every figure, live or saved: its N:M pattern's place in
    ``NM_PRESETS`` (2:4 in the method's own colour, then 4:8, 1:4, ...), for a gradual run its target
    sparsity (the default in the method's colour), moved on by its seed. Works for training and
    recovery records (anything with a ``config``)."""
    cfg = getattr(run, "config", None)
    n, m = getattr(cfg, "n", None), getattr(cfg, "m", None)
    if getattr(cfg, "method", None) == "gradual":
        target = float(getattr(cfg, "target_sparsity", 0.0))
        default = getattr(type(cfg), "target_sparsity", target)  # the dataclass field's default
        level = 0 if target == default else 1 + zlib.crc32(f"{target:g}".encode()) % (len(SHADE_LEVELS) - 1)
    elif isinstance(n, int) and isinstance(m, int):
        level = (NM_PRESETS.index((n, m)) if (n, m) in NM_PRESETS
                 else len(NM_PRESETS) + zlib.crc32(f"{n}:{m}".encode()) % (len(SHADE_LEVELS) - len(NM_PRESETS)))
    else:
        level = 0
    return level + int(getattr(cfg, "seed", 0) or 0)


def _number_text(v: float) -> str:
    return f"{v:g}"


FAMILY_COLORS = {
    "dense": "#888888", "unstructured": "#1f77b4", "N:M": "#d95f02", "SliceGPT": "#7570b3", "Monarch": "#e7298a",
}
"""One colour per family of structure (``sparsekit.structured.equal_cost.FAMILIES``) on every page: dense the
same mid-grey as ``METHOD_COLORS['dense']``, unstructured the blue of magnitude pruning (its default method),
N:M orange, SliceGPT purple, Monarch magenta."""
