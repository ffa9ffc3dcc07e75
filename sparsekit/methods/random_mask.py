"""Random pruning: a seeded random choice of the same count (the honest baseline)."""
from __future__ import annotations

import zlib

import torch

from .base import Method, register
from .types import PruneSettings


def layer_scores(weight: torch.Tensor, name: str, config: PruneSettings) -> torch.Tensor:
    """Uniform scores for one layer, from a stream derived from the config's seed and the layer's name
    (so a layer's mask does not depend on which other layers are selected)."""
    gen = torch.Generator().manual_seed((config.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    return torch.rand(weight.shape, generator=gen)


register(Method(name="random", label="random", needs_calibration=False, layer_scores=layer_scores, uses_seed=True,
                help="keeps a seeded random choice: the baseline"))
