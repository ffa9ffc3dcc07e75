"""One pruned setting, measured: prune a copy with a ``SparsifyConfig`` and score it with the
model's own quality metric, counting its weight memory in the cheapest format per layer.

This is the unit of work of a comparison (``sparsekit.compare``) and of a study's oneshot cell
(``sparsekit.study``); both sit above it.
"""
from __future__ import annotations

import time
from typing import Any

from .config import SparsifyConfig
from .sparsify import SparsifyResult, sparsify

COMPARE_VERSION = 2  # 2: SparseGPT H per sequence, block calibration order
"""Bump when a row's contents or meaning change, so stale cached rows are ignored."""


def best_format_bytes(result: SparsifyResult) -> dict[str, Any]:
    """Weight memory of the Linear/Conv layers, each in its cheapest format.

    Args:
        result: a sparsify result.

    Returns:
        ``{"dense_bytes", "best_bytes", "formats": {format: layer count}}``; layers left dense
        count at their dense size.
    """
    dense = best = 0
    formats: dict[str, int] = {}
    for r in result.report:
        dense += r.dense_bytes
        if not r.pruned:
            best += r.dense_bytes
            formats["dense"] = formats.get("dense", 0) + 1
            continue
        # N:M first: on a tie (2:4 costs exactly a bitmask) the format sparse kernels run wins.
        options = {"n:m": r.nm_bytes} if r.nm_bytes is not None else {}
        options.update({"dense": r.dense_bytes, "bitmask": r.bitmask_bytes, "csr": r.csr_bytes})
        fmt = min(options, key=options.get)
        best += options[fmt]
        formats[fmt] = formats.get(fmt, 0) + 1
    return {"dense_bytes": dense, "best_bytes": best, "formats": formats}


def pattern_label(config: SparsifyConfig) -> str:
    """``2:4`` or ``unstructured 70%``."""
    if config.pattern == "nm":
        return f"{config.n}:{config.m}"
    if config.pattern == "unstructured":
        return f"unstructured {config.sparsity:.0%}"
    return "dense"


def evaluate(loaded: Any, config: SparsifyConfig, *, calibration: Any = None) -> dict[str, Any]:
    """Prune a copy with ``config`` and measure it: one row of a comparison.

    Args:
        loaded: a ``LoadedModel`` (its ``quality`` metric is used).
        config: the setting.
        calibration: calibration inputs (default: the model's).

    Returns:
        A JSON-serialisable dict: ``method``, ``pattern``, ``setting``, ``target_sparsity``,
        ``sparsity`` (pruned share of all Linear/Conv weights), ``quality`` (metric -> value),
        ``dense_bytes``, ``best_bytes``, ``formats``, ``layers_pruned``, ``layers_total``,
        ``seconds``, ``notes`` and ``config`` (its JSON).
    """
    start = time.perf_counter()
    result = sparsify(loaded, config, calibration=calibration)
    prune_seconds = time.perf_counter() - start
    quality = loaded.quality(result.model)
    summary = result.summary()
    memory = best_format_bytes(result)
    return {
        "method": config.method,
        "pattern": pattern_label(config),
        "family": "N:M" if config.pattern == "nm" else config.pattern,
        "setting": f"{pattern_label(config)} {config.method}",
        "target_sparsity": 1.0 - config.target_density,
        "sparsity": 1.0 - summary["kept_fraction_all_layers"],
        "quality": {k: float(v) for k, v in quality.items()},
        "dense_bytes": memory["dense_bytes"],
        "best_bytes": memory["best_bytes"],
        "formats": memory["formats"],
        "layers_pruned": summary["layers_pruned"],
        "layers_total": summary["layers_total"],
        "prune_seconds": prune_seconds,
        "seconds": time.perf_counter() - start,
        "notes": dict(result.notes),
        "config": config.to_json(),
    }


__all__ = ["COMPARE_VERSION", "best_format_bytes", "evaluate", "pattern_label"]
