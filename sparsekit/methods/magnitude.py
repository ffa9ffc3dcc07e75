"""Magnitude pruning: keep the largest |w| (the baseline every other method is measured against)."""
from __future__ import annotations

import torch

from .base import Method, register
from .types import PruneSettings


def layer_scores(weight: torch.Tensor, name: str, config: PruneSettings) -> torch.Tensor:
    """The weight itself (masks keep the largest ``|scores|``)."""
    return weight


register(Method(name="magnitude", label="magnitude", needs_calibration=False, layer_scores=layer_scores,
                help="keeps the largest |w|"))
