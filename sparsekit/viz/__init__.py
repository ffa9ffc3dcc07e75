"""Plotly figure builders: the library's records (or tensors) in, ``go.Figure`` out. No Streamlit here.

One module per area: ``masks`` (one layer's mask), ``reports`` (a sparsified model), ``sensitivity``
(layer sensitivity scans), ``bench`` (kernel timings), ``training`` (training runs, SAD, seed
studies), ``recovery`` (recovery runs, flip rate and oscillation), ``attention``, ``compare``, ``families``
(the equal-cost figure), ``kvcache``, ``attribution`` and ``soup`` (model soups); ``_style`` holds what they
share. Every public name is importable from here, so ``from sparsekit import viz; viz.mask_heatmap(...)``
works whatever module a builder lives in. Names are imported on first use (PEP 562): asking for one imports
the module that owns it, so a page that draws masks never imports the study or training figures
and the libraries behind them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable

from ..display import register_figure_finder

if TYPE_CHECKING:
    from ..maskstats import DEFAULT_MAX_CELLS
    from ._style import (
        DIFF_COLORS,
        FAMILY_COLORS,
        KEPT_COLOR,
        MODE_COLORS,
        PRUNED_COLOR,
        RUN_COLORS,
        SHADE_LEVELS,
        SKIPPED_COLOR,
        color_map,
        log_ticks,
        method_color,
        method_colors,
        shade,
        shade_level,
    )
    from .attention import (
        ATTENTION_FAMILY_COLORS,
        LABEL_ALL_TOKENS,
        attention_heatmap,
        capture_figure,
        head_grid_figure,
        head_metrics_figure,
        head_picker_figure,
        plan_grid_figure,
        search_tradeoff_figure,
    )
    from .attribution import agreement_figure, attribution_maps_figure, token_attribution_figure
    from .bench import (
        attention_speedup_figure,
        bench_figures,
        bench_run_figure,
        speedup_batch_figure,
        speedup_density_figure,
    )
    from .compare import METHOD_COLORS, compare_figure
    from .families import family_cost_figure
    from .kvcache import KV_METHOD_STYLES, kv_quality_bytes_figure
    from .masks import (
        TEXT_CELLS_MAX,
        density_profile,
        magnitude_histogram,
        mask_diff_figure,
        mask_heatmap,
        mask_zoom_figure,
        nm_group_figure,
        nm_pattern_figure,
    )
    from .recovery import (
        flip_rate_figure,
        recovery_colors,
        recovery_curves_figure,
        recovery_figure,
        recovery_gap_figure,
        recovery_sad_figure,
        recovery_sad_heatmap,
    )
    from .reports import layer_kept_figure, memory_figure, params_by_type_figure, quality_figure
    from .sensitivity import allocation_figure, sensitivity_heatmap, sensitivity_proxy_figure
    from .soup import soup_figure, soup_level_colors
    from .study import study_figure, study_interval_figure, study_pareto_figure, study_quality_figure, variant_colors
    from .training import (
        FLIP_COLORSCALE,
        STUDY_COLORS,
        flip_count_figure,
        flip_maps_figure,
        lambda_sweep_figure,
        paired_difference_figure,
        run_colors,
        run_figure,
        run_key,
        sad_heatmap_figure,
        sad_series_figure,
        seed_study_figure,
        training_curves_figure,
    )

_OWNERS: dict[str, tuple[str, ...]] = {
    "..maskstats": (
        "DEFAULT_MAX_CELLS",
    ),
    "._style": (
        "DIFF_COLORS", "FAMILY_COLORS", "KEPT_COLOR", "MODE_COLORS", "PRUNED_COLOR", "RUN_COLORS", "SHADE_LEVELS",
        "SKIPPED_COLOR", "color_map", "log_ticks", "method_color", "method_colors", "shade", "shade_level",
    ),
    ".attention": (
        "ATTENTION_FAMILY_COLORS", "LABEL_ALL_TOKENS", "attention_heatmap", "capture_figure", "head_grid_figure",
        "head_metrics_figure", "head_picker_figure", "plan_grid_figure", "search_tradeoff_figure",
    ),
    ".attribution": (
        "agreement_figure", "attribution_maps_figure", "token_attribution_figure",
    ),
    ".bench": (
        "attention_speedup_figure", "bench_figures", "bench_run_figure", "speedup_batch_figure",
        "speedup_density_figure",
    ),
    ".compare": (
        "METHOD_COLORS", "compare_figure",
    ),
    ".families": (
        "family_cost_figure",
    ),
    ".kvcache": (
        "KV_METHOD_STYLES", "kv_quality_bytes_figure",
    ),
    ".masks": (
        "TEXT_CELLS_MAX", "density_profile", "magnitude_histogram", "mask_diff_figure", "mask_heatmap",
        "mask_zoom_figure", "nm_group_figure", "nm_pattern_figure",
    ),
    ".recovery": (
        "flip_rate_figure", "recovery_colors", "recovery_curves_figure", "recovery_figure", "recovery_gap_figure",
        "recovery_sad_figure", "recovery_sad_heatmap",
    ),
    ".reports": (
        "layer_kept_figure", "memory_figure", "params_by_type_figure", "quality_figure",
    ),
    ".sensitivity": (
        "allocation_figure", "sensitivity_heatmap", "sensitivity_proxy_figure",
    ),
    ".soup": (
        "soup_figure", "soup_level_colors",
    ),
    ".study": (
        "study_figure", "study_interval_figure", "study_pareto_figure", "study_quality_figure", "variant_colors",
    ),
    ".training": (
        "FLIP_COLORSCALE", "STUDY_COLORS", "flip_count_figure", "flip_maps_figure", "lambda_sweep_figure",
        "paired_difference_figure", "run_colors", "run_figure", "run_key", "sad_heatmap_figure", "sad_series_figure",
        "seed_study_figure", "training_curves_figure",
    ),
}
_MODULE_OF = {name: module for module, names in _OWNERS.items() for name in names}
"""Public name -> the module (relative to this package) that defines it."""
_SUBMODULES = frozenset(m[1:] for m in _OWNERS if m.startswith(".") and not m.startswith(".."))

__all__ = [
    "study_interval_figure", "study_pareto_figure", "study_quality_figure", "ATTENTION_FAMILY_COLORS",
    "allocation_figure", "capture_figure", "head_metrics_figure", "study_figure", "run_figure", "recovery_figure",
    "bench_run_figure", "MODE_COLORS", "method_color", "method_colors", "variant_colors",
    "SHADE_LEVELS", "shade", "shade_level",
    "DEFAULT_MAX_CELLS", "LABEL_ALL_TOKENS", "DIFF_COLORS", "FLIP_COLORSCALE", "KEPT_COLOR", "METHOD_COLORS",
    "PRUNED_COLOR", "RUN_COLORS", "SKIPPED_COLOR", "STUDY_COLORS", "TEXT_CELLS_MAX", "agreement_figure",
    "attention_heatmap", "attention_speedup_figure", "attribution_maps_figure", "bench_figures", "color_map",
    "compare_figure", "density_profile", "flip_count_figure", "flip_maps_figure", "flip_rate_figure",
    "head_grid_figure", "head_picker_figure", "lambda_sweep_figure", "layer_kept_figure", "log_ticks",
    "magnitude_histogram", "mask_diff_figure", "mask_heatmap", "mask_zoom_figure", "memory_figure", "nm_group_figure",
    "nm_pattern_figure", "paired_difference_figure", "params_by_type_figure", "plan_grid_figure", "quality_figure",
    "recovery_colors", "recovery_curves_figure", "recovery_gap_figure", "recovery_sad_figure", "recovery_sad_heatmap",
    "run_colors", "run_key", "sad_heatmap_figure", "sad_series_figure", "search_tradeoff_figure", "sensitivity_heatmap",
    "sensitivity_proxy_figure", "seed_study_figure", "speedup_batch_figure", "speedup_density_figure",
    "token_attribution_figure", "training_curves_figure", "KV_METHOD_STYLES", "kv_quality_bytes_figure",
    "FAMILY_COLORS", "family_cost_figure", "soup_figure", "soup_level_colors",
]


def __getattr__(name: str) -> Any:
    """Import the module that owns ``name`` on first use (PEP 562) and keep the name here."""
    module = _MODULE_OF.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _figure_builder(name: str) -> Callable[..., Any] | None:
    """The public builder called ``name`` (its module imported now), or None: no public callable of that name."""
    if name not in __all__:
        return None
    value = globals()[name] if name in globals() else __getattr__(name)
    return value if callable(value) else None


# Results' .figure() (sparsekit.display) asks for its builder by name when it first draws.
register_figure_finder(_figure_builder)
