"""Position-only local patterns: dense, causal, sliding and dilated windows.

Indices are positions inside one sequence: query ``i``, key ``j``. For a decoder the model's own
causal mask still applies on top of any pattern (``sparsekit.attention.apply``).
"""
from __future__ import annotations

from torch import Tensor

from .core import MaskMod
from .registry import DISTANCE, arg, pattern

WINDOW = arg("largest distance |i − j| kept", default=8, fits=DISTANCE)
"""The ``window`` of the sliding window, shared by the patterns built on it."""
_CAUSAL = arg("keep only keys at or before the query (0 ≤ i − j)")


@pattern("Full (dense)", "keep every (i, j)")
def full() -> MaskMod:
    """Dense attention: every query attends to every key.

    Returns:
        ``mask_mod`` that is True for all ``(i, j)``.
    """

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (q_idx >= 0) & (kv_idx >= 0)

    return mask_mod


@pattern("Causal", "keep j ≤ i")
def causal() -> MaskMod:
    """Causal (decoder) attention: keep ``j <= i``.

    Returns:
        ``mask_mod`` for ``kv_idx <= q_idx``.
    """

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return kv_idx <= q_idx

    return mask_mod


@pattern("Sliding window", "|i − j| ≤ w (causal: 0 ≤ i − j ≤ w)",
         window=WINDOW, causal=_CAUSAL)
def sliding_window(window: int, *, causal: bool = False) -> MaskMod:
    """Sliding-window (local) attention.

    Symmetric: keep ``|i - j| <= window``. Causal: keep ``0 <= i - j <= window``.

    Args:
        window: largest distance kept (0 keeps only the diagonal).
        causal: look only backwards.

    Returns:
        The ``mask_mod``.
    """

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        d = q_idx - kv_idx
        if causal:
            return (d >= 0) & (d <= window)
        return d.abs() <= window

    return mask_mod


@pattern("Dilated window", "|i − j| ≤ w and |i − j| mod d = 0",
         window=arg("largest distance kept", default=16, fits=DISTANCE),
         dilation=arg("keep every d-th distance", default=2, minimum=1, fits=DISTANCE), causal=_CAUSAL)
def dilated_window(window: int, dilation: int, *, causal: bool = False) -> MaskMod:
    """Dilated sliding window.

    Symmetric: keep ``|i - j| <= window`` and ``|i - j| mod dilation == 0``. Causal: the same
    with ``0 <= i - j``. ``dilation = 1`` is the plain sliding window.

    Args:
        window: largest distance kept.
        dilation: keep every ``dilation``-th distance (>= 1).
        causal: look only backwards.

    Returns:
        The ``mask_mod``.
    """

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        d = q_idx - kv_idx
        near = ((d >= 0) & (d <= window)) if causal else (d.abs() <= window)
        return near & (d.abs() % dilation == 0)

    return mask_mod
