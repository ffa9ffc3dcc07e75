"""One pruned setting, measured: prune a copy with a ``SparsifyConfig`` and score it with the
model's own quality metric, counting its weight memory in the cheapest format per layer.

This is the unit of work of a comparison (``sparsekit.compare``) and of a study's oneshot cell
(``sparsekit.study``); both sit above it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping, Self, TypedDict

from . import serial
from .config import SparsifyConfig
from .methods.types import Calibration
from .models.base import LoadedModel
from .sparsify import SparsifyResult, sparsify

COMPARE_VERSION = 2  # 2: SparseGPT H per sequence, block calibration order
"""Bump when a row's contents or meaning change, so stale cached rows are ignored."""


@dataclass(frozen=True, kw_only=True)
class CompareRow:
    """One pruned setting, measured: a row of a comparison (``evaluate``, ``compare.dense_row``).

    Stored in the disk cache as ``to_json``'s dict (inside a study cell's record, see
    ``sparsekit.study.records``, and by ``compare.permuted_nm_row``), read back with ``from_json`` under
    ``sparsekit.serial``'s rule: an unknown field is refused, a missing one is an error except ``cached``.
    """

    method: str
    """Scoring method (``magnitude``, ``wanda``, ...; ``dense`` for the unpruned model)."""
    pattern: str
    """``2:4``, ``unstructured 70%`` or ``dense`` (``pattern_label``)."""
    family: str
    """``N:M``, ``unstructured`` or ``dense``."""
    setting: str
    """``{pattern} {method}`` (``dense`` for the dense row)."""
    target_sparsity: float
    """Pruned share the config asks for (``1 - target_density``)."""
    sparsity: float
    """Pruned share of all Linear/Conv weights (layers that cannot take the pattern stay dense)."""
    quality: dict[str, float]
    """Quality metric -> value, with the model's own metric (NaN where the pruned model broke down)."""
    dense_bytes: int
    """Weight memory of the Linear/Conv layers, dense."""
    best_bytes: int
    """The same, each layer in its cheapest format (``best_format_bytes``)."""
    formats: dict[str, int]
    """Format (``dense``, ``bitmask``, ``csr``, ``n:m``) -> number of layers stored in it."""
    layers_pruned: int
    layers_total: int
    prune_seconds: float
    """Seconds to prune (calibrated methods include their calibration pass)."""
    seconds: float
    """Seconds to prune and measure."""
    notes: dict[str, str]
    """Layer -> why it was left dense or treated differently."""
    config: str
    """The ``SparsifyConfig`` as its JSON text."""
    cached: bool = False
    """Whether this row came from the disk cache rather than being computed now: where this process got
    the row, not part of what is stored (``to_json`` leaves it out)."""

    def to_json(self) -> dict[str, Any]:
        """The row as JSON-able data, as the cache stores it: ``sparsekit.serial.to_json`` without
        ``cached`` (so ``from_json(to_json(row)) == replace(row, cached=False)``)."""
        out = serial.to_json(self)
        del out["cached"]
        return out

    @classmethod
    def from_json(cls, data: str | Mapping[str, Any]) -> Self:
        """Inverse of ``to_json``, under ``sparsekit.serial``'s rule.

        A quality value stored as null (strict JSON has no NaN) reads back as NaN.

        Raises:
            ValueError: not a JSON object, an unknown field, or a missing field other than ``cached``.
        """
        row = serial.from_json(cls, data, what="compare row")
        if any(v is None for v in row.quality.values()):
            row = replace(row, quality={k: math.nan if v is None else v for k, v in row.quality.items()})
        return row


@dataclass(frozen=True, kw_only=True)
class PermutedRow(CompareRow):
    """Magnitude N:M after a function-preserving channel permutation (``compare.permuted_nm_row``)."""

    search_seconds: float
    """Seconds spent searching the permutations."""
    recovered_share: float
    """Share of the gap in kept magnitude between plain N:M and unstructured that the permutation closes,
    over the permuted layers."""
    layers: list[dict[str, Any]]
    """Per-layer search report (``permutation.ChannelPermutation.rows``), each with its ``perm``."""
    skipped: dict[str, str]
    """Layer -> why it was not permuted."""
    stopped: bool
    """Whether the search was stopped before every layer was searched (such a row is not cached)."""
    layers_searched: int
    not_reached: list[str]
    """Layers a stopped search did not get to (left unpermuted)."""


class FormatBytes(TypedDict):
    """Weight memory of the Linear/Conv layers (``best_format_bytes``)."""

    dense_bytes: int
    """All of them, dense."""
    best_bytes: int
    """Each in its cheapest format (layers left dense at their dense size)."""
    formats: dict[str, int]
    """Format -> number of layers stored in it."""


def summary_number(summary: Mapping[str, float | int | None], key: str) -> float | int:
    """One number of ``SparsifyResult.summary()``, which may also hold None (``pruned_nm_bytes``).

    Raises:
        ValueError: the summary holds None under ``key``.
    """
    value = summary[key]
    if value is None:
        raise ValueError(f"the sparsify summary has no value for {key!r}")
    return value


def best_format_bytes(result: SparsifyResult) -> FormatBytes:
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
        fmt = min(options, key=options.__getitem__)
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


def evaluate(loaded: LoadedModel, config: SparsifyConfig, *, calibration: Calibration | None = None) -> CompareRow:
    """Prune a copy with ``config`` and measure it: one row of a comparison.

    Args:
        loaded: a ``LoadedModel`` (its ``quality`` metric is used).
        config: the setting.
        calibration: calibration inputs (default: the model's).

    Returns:
        The ``CompareRow`` (``cached`` False).
    """
    start = time.perf_counter()
    result = sparsify(loaded, config, calibration=calibration, progress=None)
    prune_seconds = time.perf_counter() - start
    quality = loaded.quality(result.model)
    summary = result.summary()
    memory = best_format_bytes(result)
    return CompareRow(
        method=config.method,
        pattern=pattern_label(config),
        family="N:M" if config.pattern == "nm" else config.pattern,
        setting=f"{pattern_label(config)} {config.method}",
        target_sparsity=1.0 - config.target_density,
        sparsity=1.0 - float(summary_number(summary, "kept_fraction_all_layers")),
        quality={k: float(v) for k, v in quality.items()},
        dense_bytes=memory["dense_bytes"],
        best_bytes=memory["best_bytes"],
        formats=memory["formats"],
        layers_pruned=int(summary_number(summary, "layers_pruned")),
        layers_total=int(summary_number(summary, "layers_total")),
        prune_seconds=prune_seconds,
        seconds=time.perf_counter() - start,
        notes=dict(result.notes),
        config=config.to_json(),
    )


__all__ = ["COMPARE_VERSION", "CompareRow", "FormatBytes", "PermutedRow", "best_format_bytes", "evaluate",
           "pattern_label", "summary_number"]
