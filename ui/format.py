"""How numbers and model details are written on the pages."""
from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

from sparsekit.models import model_roots

KIND_LABELS = {"encoder": "text encoder", "causal-lm": "causal LM", "image-classifier": "image classifier"}


def metric_text(value: float) -> str:
    """A quality value with a fixed number of decimals by size (97.22 and 97.50, 0.9876)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.2f}" if abs(value) >= 10 else f"{value:.4f}"


def change_text(change: float, like: float) -> str:
    """A signed change with the decimals ``metric_text`` gives a value like ``like``."""
    return f"{change:+,.2f}" if abs(like) >= 10 else f"{change:+.4f}"


def shown_path(path: str) -> str:
    """A server path as a browser user may see it: relative to its model root, else its last part."""
    real = Path(os.path.realpath(path))
    for root in model_roots():
        if real == root or root in real.parents:
            return f"{root.name}/{real.relative_to(root).as_posix()}".rstrip("/.")
    return f"…/{real.name}"


MISSING = "—"
"""What a table or a detail shows for a missing value (never "None" or "nan")."""

HEADERS = {
    "explained_class": "explained class", "sparse_prediction": "sparse prediction", "median_ms": "median (ms)",
    "iqr_ms": "IQR (ms)", "baseline_ms": "baseline (ms)", "q1_ms": "Q1 (ms)", "q3_ms": "Q3 (ms)",
    "rel_error": "relative error", "achieved_tflops": "achieved TFLOP/s", "achieved_gbps": "achieved GB/s",
    "speedup": "speed-up (×)", "early_sad_pct": "early SAD (%)", "late_sad_pct": "late SAD (%)",
    "late_flipped_pct": "late flipped (%)", "best_KB": "cheapest (KB)", "best_bytes": "cheapest (bytes)",
    "target_sparsity": "target sparsity", "layers_pruned": "layers pruned", "layers_total": "layers",
    "prune_seconds": "pruning (s)", "seconds": "time (s)", "kept_fraction": "kept share",
    "kept_before": "kept |w|, N:M", "kept_after": "kept |w|, permuted", "kept_unstructured": "kept |w|, unstructured",
    "kept_row_bound": "kept |w|, per-row bound", "recovered_share": "recovered share", "layer_type": "type",
    "weight_shape": "weight shape", "skipped_reason": "left dense because",
}
"""Human column headers, with units, for the raw field names tables carry."""


def header_text(column: str) -> str:
    """A column's header for a reader: ``HEADERS``, else underscores as spaces with ``_ms``/``_pct``
    written as units ("median_ms" -> "median (ms)")."""
    if column in HEADERS:
        return HEADERS[column]
    if column.startswith("p_") and len(column) > 2:  # a benchmark case's parameter
        return column[2:].replace("_", " ")
    for suffix, unit in (("_ms", "ms"), ("_pct", "%"), ("_seconds", "s"), ("_bytes", "bytes")):
        if column.endswith(suffix) and len(column) > len(suffix):
            return f"{column[: -len(suffix)].replace('_', ' ')} ({unit})"
    return column.replace("_", " ") if column.islower() or "_" in column else column


def cell_text(value: Any) -> str:
    """One table cell: an em dash for missing, integers with thousands separators (5,308,416), other
    numbers as ``metric_text`` writes them (96.11, 0.9876)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        v = float(value)
        if v.is_integer() and abs(v) >= 1000:
            return f"{int(v):,}"
        return metric_text(v) if abs(v) >= 10 or v == 0 else f"{v:.4g}"
    return str(value)


def shown_table(frame: Any) -> Any:
    """``frame`` (a DataFrame) as a reader sees it: human headers with units, ``cell_text`` cells."""
    out = frame.copy()
    for column in out.columns:
        out[column] = [cell_text(v) for v in out[column]]
    return out.rename(columns={c: header_text(str(c)) for c in out.columns})


def table_view(frame: Any, column_config: dict | None = None) -> dict[str, Any]:
    """``st.dataframe`` arguments that show ``frame`` as a reader should see it while its values stay
    numbers (sortable, and what tests read): ``cell_text`` cells through a Styler, human headers
    (``header_text``) as column labels; a column the caller gives a column config (not just a
    label) in ``column_config`` keeps that config's format.

    Missing values in the columns the caller configures show ``MISSING`` too (the dataframe's placeholder).
    Use as ``st.dataframe(**table_view(frame), hide_index=True)``.
    """
    own = column_config or {}
    config: dict[str, Any] = {str(c): header_text(str(c)) for c in frame.columns}
    # A column config without a label (NumberColumn(format=...)) would show the raw name: give it the header.
    config.update({c: {**v, "label": header_text(c)} if isinstance(v, dict) and not v.get("label") else v
                   for c, v in own.items()})
    styled = [c for c in frame.columns if isinstance(own.get(str(c), ""), str)]  # a label only: styled
    return {"data": frame.style.format(cell_text, subset=styled), "column_config": config, "placeholder": MISSING}


def size_text(num_bytes: float) -> str:
    """A file size in a unit that suits it: bytes, KB, MB or GB (1 KB = 1024 bytes)."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:,.1f} {unit}"
    return f"{int(num_bytes):,} bytes"


def _value_text(key: str, value: Any) -> str:
    if key == "path" or key.endswith("_path"):
        return shown_path(str(value))
    if key.endswith("_seconds") and isinstance(value, (int, float)):
        return f"{value:,.1f} s"
    if value is None:
        return MISSING
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def source_details(loaded) -> list[tuple[str, str]]:
    """(detail, value) rows of ``loaded.info`` for the Model page: no server path beyond the model
    roots, times in seconds with one decimal; the notes are shown apart."""
    return [(key.replace("_", " "), _value_text(key, value)) for key, value in loaded.info.items() if key != "notes"]
