"""How numbers and model details are written on the pages."""
from __future__ import annotations

import json
import math
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


def _value_text(key: str, value: Any) -> str:
    if key == "path" or key.endswith("_path"):
        return shown_path(str(value))
    if key.endswith("_seconds") and isinstance(value, (int, float)):
        return f"{value:,.1f} s"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def source_details(loaded) -> list[tuple[str, str]]:
    """(detail, value) rows of ``loaded.info`` for the Model page: no server path beyond the model
    roots, times in seconds with one decimal; the notes are shown apart."""
    return [(key.replace("_", " "), _value_text(key, value)) for key, value in loaded.info.items() if key != "notes"]
