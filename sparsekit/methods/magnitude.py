"""Magnitude pruning: keep the largest |w| (the baseline every other method is measured against)."""
from __future__ import annotations

from .base import Method, register

register(Method(name="magnitude", label="magnitude", needs_calibration=False,
                layer_scores=lambda weight, name, config: weight, help="keeps the largest |w|"))
