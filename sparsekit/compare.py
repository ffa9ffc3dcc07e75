"""Compare pruning methods on one model: methods x patterns x sparsity levels, with cached results.

Each setting prunes a fresh copy of the model (``sparsekit.sparsify``) and measures its quality
with the model's own metric. The weight memory of each result is counted in the best compressed
format per layer (dense, bitmask, CSR or N:M-compressed, see ``sparsify.format_bytes``). Results
are cached on disk as JSON, keyed by a hash of the model's weights, the config and the
calibration data, so a sweep is computed once per model.

Beyond masks, ``family_points`` (from ``sparsekit.structured``, re-exported here) puts unstructured, N:M,
SliceGPT and Monarch on one equal-cost axis (kept parameters; stored bytes).
"""
from __future__ import annotations

import json
import time
from dataclasses import fields, replace
from typing import Any, Callable, Iterable, Sequence

from torch import nn

from .cache import calibration_digest, get_cache, make_key, model_fingerprint
from .config import NM_PRESETS, SparsifyConfig
from .evaluate import COMPARE_VERSION, CompareRow, PermutedRow, best_format_bytes, summary_number
from .evaluate import evaluate as evaluate  # re-exported: sparsekit.compare.evaluate
from .evaluate import pattern_label as pattern_label  # re-exported: sparsekit.compare.pattern_label
from .layers import layer_weight, prunable_layers
from .methods import METHODS, get_method
from .methods.types import Calibration
from .models.base import LoadedModel
from .permutation import permute_channels
from .progress import ProgressArg, ProgressFn, reporter
from .sparsify import sparsify
from .structured.equal_cost import FamilyPoints as FamilyPoints  # re-exported: sparsekit.compare.FamilyPoints
from .structured.equal_cost import family_points as family_points  # re-exported: the equal-cost axis

PERMUTED_ROW_VERSION = 2  # 2: layers carry their perm; stopped, layers_searched, not_reached
"""Version of the cached ``permuted_nm_row`` rows (on top of ``COMPARE_VERSION``)."""
DEFAULT_METHODS = ("magnitude", "wanda", "sparsegpt", "taylor", "random")
DEFAULT_NM = NM_PRESETS[:3]
DEFAULT_SPARSITIES = (0.5, 0.7)
MAX_SETTINGS = 80
"""Most configs one sweep may hold (each one prunes and evaluates a copy)."""


def sweep_configs(
    methods: Sequence[str] = DEFAULT_METHODS,
    nm_patterns: Iterable[tuple[int, int]] = DEFAULT_NM,
    sparsities: Iterable[float] = DEFAULT_SPARSITIES,
    *,
    base: SparsifyConfig | None = None,
) -> list[SparsifyConfig]:
    """The configs of a sweep: every method at every N:M pattern and unstructured sparsity.

    Args:
        methods: scoring methods (``sparsify.METHODS``).
        nm_patterns: ``(n, m)`` pairs, N = kept.
        sparsities: unstructured fractions pruned, each in [0, 0.99].
        base: settings shared by all (layer selection, seed, conv grouping); default
            ``SparsifyConfig()``.

    Returns:
        Validated configs, N:M first, in the order given.

    Raises:
        ValueError: an unknown method, an invalid pattern or sparsity, an empty or too large sweep.
    """
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ValueError("choose at least one method")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS}")
    base = base or SparsifyConfig()
    configs = []
    for n, m in dict.fromkeys(tuple(p) for p in nm_patterns):
        for method in methods:
            configs.append(replace(base, pattern="nm", n=int(n), m=int(m), method=method))
    for s in dict.fromkeys(sparsities):
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise ValueError(f"sparsity must be a number, got {s!r}")
        for method in methods:
            configs.append(replace(base, pattern="unstructured", sparsity=float(s), scope="layer", method=method))
    if not configs:
        raise ValueError("choose at least one N:M pattern or unstructured sparsity")
    if len(configs) > MAX_SETTINGS:
        raise ValueError(f"the sweep has {len(configs)} settings; at most {MAX_SETTINGS}")
    for c in configs:
        c.validate()
    return configs


def dense_row(loaded: LoadedModel) -> CompareRow:
    """The dense model as a comparison row (sparsity 0, dense memory)."""

    weights = [layer_weight(m) for _, m in prunable_layers(loaded.module)]
    dense_bytes = sum(w.numel() * w.element_size() for w in weights)
    return CompareRow(
        method="dense", pattern="dense", family="dense", setting="dense",
        target_sparsity=0.0, sparsity=0.0, quality=dict(loaded.quality()),
        dense_bytes=dense_bytes, best_bytes=dense_bytes, formats={}, layers_pruned=0,
        layers_total=len(prunable_layers(loaded.module)), prune_seconds=0.0, seconds=0.0,
        notes={}, config=SparsifyConfig(pattern="dense").to_json(), cached=True,
    )


def compare(
    loaded: LoadedModel,
    configs: Sequence[SparsifyConfig],
    *,
    calibration: Calibration | None = None,
    use_cache: bool = True,
    progress: ProgressArg = True,
) -> list[CompareRow]:
    """Evaluate every config on ``loaded``, reading and filling the disk cache.

    The settings run as oneshot cells of ``sparsekit.study`` in this process, on this model (which may
    be an upload that no spec string reloads), keyed by its weights and calibration data.

    Args:
        loaded: a ``LoadedModel`` (never modified).
        configs: the settings (e.g. from ``sweep_configs``).
        calibration: calibration inputs for the calibrated methods (default: the model's).
        use_cache: read cached rows (computed rows are always stored).
        progress: True (default): a ``tqdm.auto`` bar when the call takes over 2 s; False: silent; or a
            ``progress(fraction, message)`` callback (``sparsekit.progress``).

    Returns:
        One ``CompareRow`` per config (see ``evaluate``), in order, ``cached`` saying where it came from.
    """
    with reporter(progress, "compare") as report:
        return _compare(loaded, configs, calibration=calibration, use_cache=use_cache, progress=report)


def _compare(
     loaded: LoadedModel,
     configs: Sequence[SparsifyConfig],
     *,
     calibration: Calibration | None = None,
     use_cache: bool = True,
     progress: ProgressFn | None = None,
) -> list[CompareRow]:
    from .study import LocalBackend, execute, oneshot_cell  # the study engine imports this module
    from .study.records import CellRecord
    from .study.spec import Cell

    if not hasattr(loaded, "quality") or not isinstance(getattr(loaded, "module", None), nn.Module):
        raise TypeError(f"compare needs a LoadedModel (with a quality metric), got {type(loaded).__name__}")
    if len(configs) > MAX_SETTINGS:
        raise ValueError(f"{len(configs)} settings; at most {MAX_SETTINGS}")
    for c in configs:
        c.validate()
    cells = [oneshot_cell(loaded.spec, c) for c in configs]
    rows: list[CompareRow | None] = [None] * len(configs)
    total = max(len(configs), 1)

    def on_record(i: int, cell: Cell, record: CellRecord, cached: bool) -> None:
        rows[i] = replace(record.compare_row(), cached=cached)
        if progress is not None:
            progress(sum(r is not None for r in rows) / total, f"{configs[i].label()} ({i + 1}/{len(configs)})")

    if progress is not None:
        progress(0.0, f"{len(configs)} settings")
    backend = LocalBackend(models={loaded.spec: loaded}, calibration=calibration, raise_errors=True)
    execute(cells, backend, keys=_row_keys(loaded, configs, calibration), read_cache=use_cache, on_record=on_record)
    if progress is not None:
        progress(1.0, "done")
    return [r for r in rows if r is not None]


def _row_keys(loaded: LoadedModel, configs: Sequence[SparsifyConfig],
              calibration: Calibration | None = None) -> list[str]:
    from .study import CELL_VERSION

    fingerprint = model_fingerprint(loaded.module)
    calib = calibration if calibration is not None else getattr(loaded, "calibration", None)
    calib_digest = calibration_digest(calib)
    # Only calibrated methods depend on the calibration data.
    return [make_key("compare", COMPARE_VERSION, CELL_VERSION, loaded.spec, fingerprint, c.to_json(),
                     calib_digest if get_method(c.method).needs_calibration else "") for c in configs]


def cached_rows(loaded: LoadedModel, configs: Sequence[SparsifyConfig], *,
                calibration: Calibration | None = None) -> list[CompareRow] | None:
    """The rows ``compare`` would return, if every one of them is already in the disk cache.

    Args:
        loaded: a ``LoadedModel``.
        configs: the settings.
        calibration: as for ``compare``.

    Returns:
        The cached rows in order (each with ``cached=True``), or None when any setting has not
        been computed for this model (nothing is computed here).
    """
    from .study.store import is_done, load_record

    if not configs:
        return None
    rows = []
    for key in _row_keys(loaded, configs, calibration):
        record = load_record(key)
        if record is None or not is_done(record):
            return None
        rows.append(replace(record.compare_row(), cached=True))
    return rows


def flat_rows(rows: Sequence[CompareRow]) -> list[dict[str, Any]]:
    """Rows as table rows: their scalar fields, the quality metrics as top-level columns, ``formats`` as
    text (for tables and CSV)."""
    out = []
    for r in rows:
        flat = {f.name: getattr(r, f.name) for f in fields(r)
                if f.name not in ("quality", "formats", "notes", "config")}
        flat.update(r.quality)
        flat["formats"] = ", ".join(f"{k}×{v}" for k, v in sorted(r.formats.items()))
        out.append(flat)
    return out


def pivot(rows: Sequence[CompareRow], metric: str) -> tuple[list[str], list[str], list[list[float | None]]]:
    """A pattern x method table of one metric.

    Args:
        rows: comparison rows.
        metric: a quality metric key.

    Returns:
        ``(patterns, methods, values)`` with ``values[i][j]`` the metric for pattern i and method
        j (None where that combination was not run).
    """
    patterns = list(dict.fromkeys(r.pattern for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    cells = {(r.pattern, r.method): r.quality.get(metric) for r in rows}
    return patterns, methods, [[cells.get((p, m)) for m in methods] for p in patterns]


def best_first(rows: Sequence[CompareRow], metric: str, *,
               higher_is_better: bool = True) -> dict[str, list[tuple[str, float]]]:
    """The methods of each setting ranked by one metric, best first.

    Args:
        rows: comparison rows.
        metric: a quality metric key.
        higher_is_better: whether a larger value of the metric is better.

    Returns:
        pattern -> ``[(method, value), ...]`` best first (ties keep the rows' order), patterns in
        the order they first appear.
    """
    out: dict[str, list[tuple[str, float]]] = {}
    for r in rows:
        out.setdefault(r.pattern, []).append((r.method, r.quality[metric]))
    for ranked in out.values():
        ranked.sort(key=lambda mv: mv[1], reverse=higher_is_better)
    return out


def markdown_table(rows: Sequence[CompareRow], metric: str, *, digits: int = 3) -> str:
    """The pivot of one metric as a Markdown table (patterns down, methods across)."""
    patterns, methods, values = pivot(rows, metric)
    lines = ["| setting | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for p, vals in zip(patterns, values):
        cells = ["" if v is None else f"{v:.{digits}g}" for v in vals]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _permuted_key(loaded: LoadedModel, n: int, m: int, max_seconds_per_layer: float) -> str:
    return make_key("compare-perm", COMPARE_VERSION, PERMUTED_ROW_VERSION, loaded.spec,
                    model_fingerprint(loaded.module), n, m, max_seconds_per_layer,
                    calibration_digest(getattr(loaded, "calibration", None)))


def cached_permuted_row(loaded: LoadedModel, n: int = 2, m: int = 4, *,
                        max_seconds_per_layer: float = 20.0) -> PermutedRow | None:
    """The cached ``permuted_nm_row`` of a finished search, or None (nothing is computed; an entry
    that does not read as a ``PermutedRow`` counts as missing)."""
    raw = get_cache().get(_permuted_key(loaded, n, m, max_seconds_per_layer))
    if not isinstance(raw, str):
        return None
    try:
        return replace(PermutedRow.from_json(raw), cached=True)
    except ValueError:
        return None


def permuted_nm_row(loaded: LoadedModel, n: int = 2, m: int = 4, *, use_cache: bool = True,
                    max_seconds_per_layer: float = 20.0, progress: ProgressFn | None = None,
                    should_stop: Callable[[], bool] | None = None,
                    on_layer: Callable[[dict[str, Any]], None] | None = None,
                    resume: Sequence[dict[str, Any]] | None = None) -> PermutedRow:
    """Magnitude N:M after a function-preserving channel permutation, as a comparison row (cached).

    A run that ``should_stop`` ends early gives the row of the layers finished so far (the rest
    left unpermuted) and is not cached; pass its ``layers`` as ``resume`` to continue it.

    Args:
        loaded: a ``LoadedModel`` (never modified).
        n: kept per group.
        m: group size.
        use_cache: read a cached row, and the layers a stopped or interrupted search of these inputs
            kept on disk (``permute_channels``); False searches every layer afresh.
        max_seconds_per_layer: search time limit per layer (``permutation.permute_channels``).
        progress: True (default): a ``tqdm.auto`` bar when the call takes over 2 s; False: silent; or a
            ``progress(fraction, message)`` callback (``sparsekit.progress``).
        should_stop: optional ``should_stop() -> bool``, asked between layers and search rounds.
        on_layer: optional callback with each permuted layer's row as soon as it is done.
        resume: layer rows of an earlier, stopped run (its ``layers``), not searched again.

    Returns:
        A ``PermutedRow``: a row like ``evaluate``'s with method ``magnitude+perm``, plus
        ``recovered_share`` (of the gap in kept magnitude between plain N:M and unstructured, over
        the permuted layers), ``layers`` (the per-layer search report, each with its ``perm``),
        ``skipped`` (layer -> why not permuted), ``stopped``, ``layers_searched`` and
        ``not_reached`` (layers a stopped run did not get to).
    """

    config = SparsifyConfig(pattern="nm", n=n, m=m)
    config.validate()
    key = _permuted_key(loaded, n, m, max_seconds_per_layer)
    cache = get_cache()
    if use_cache and (hit := cached_permuted_row(loaded, n, m, max_seconds_per_layer=max_seconds_per_layer)):
        return hit
    start = time.perf_counter()
    perm = permute_channels(loaded, n, m, max_seconds_per_layer=max_seconds_per_layer, progress=progress,
                            should_stop=should_stop, on_layer=on_layer, resume=resume, use_cache=use_cache)
    search_seconds = time.perf_counter() - start
    result = sparsify(perm.model, config, progress=None)
    quality = loaded.quality(result.model)
    summary = result.summary()
    memory = best_format_bytes(result)
    row = PermutedRow(
        method="magnitude+perm", pattern=f"{n}:{m}", family="N:M", setting=f"{n}:{m} magnitude+perm",
        target_sparsity=1 - n / m, sparsity=1.0 - float(summary_number(summary, "kept_fraction_all_layers")),
        quality={k: float(v) for k, v in quality.items()}, dense_bytes=memory["dense_bytes"],
        best_bytes=memory["best_bytes"], formats=memory["formats"],
        layers_pruned=int(summary_number(summary, "layers_pruned")),
        layers_total=int(summary_number(summary, "layers_total")),
        prune_seconds=time.perf_counter() - start, seconds=time.perf_counter() - start,
        search_seconds=search_seconds, notes={}, config=config.to_json(),
        recovered_share=perm.recovered_share(), layers=perm.rows, skipped=perm.skipped,
        stopped=perm.stopped, layers_searched=perm.layers_searched, not_reached=perm.not_reached,
    )
    if not perm.stopped:
        cache.set(key, json.dumps(row.to_json()))
    return row
