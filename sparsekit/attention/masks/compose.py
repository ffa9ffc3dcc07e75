"""Combining patterns: intersection and union (torch's own ``and_masks`` / ``or_masks``, so a
combined pattern is exactly what FlexAttention users write), and one pattern per head.

``and_masks()`` of nothing keeps everything and ``or_masks()`` keeps nothing; both return a 0-d
tensor then, which ``materialize`` broadcasts to the grid. Both call every ``mask_mod`` with the
same ``(b, h, q_idx, kv_idx)`` tensors, so ``b`` must be a tensor (as FlexAttention passes it).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor
from torch.nn.attention.flex_attention import and_masks, or_masks

from .core import MaskMod


def _on_head(k: int, mask_mod: MaskMod) -> MaskMod:
    def on_head(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (h == k) & mask_mod(b, h, q_idx, kv_idx)

    return on_head


def per_head(mask_mods: Sequence[MaskMod]) -> MaskMod:
    """One pattern per head: head ``h`` uses ``mask_mods[h]`` (heads beyond the list keep nothing).

    Selecting with ``h == k`` instead of Python indexing keeps it usable under ``vmap``.

    Args:
        mask_mods: one ``mask_mod`` per head.

    Returns:
        The combined ``mask_mod``.
    """
    return or_masks(*(_on_head(k, m) for k, m in enumerate(mask_mods)))


__all__ = ["and_masks", "or_masks", "per_head"]
