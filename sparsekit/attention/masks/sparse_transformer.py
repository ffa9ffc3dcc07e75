"""The Sparse Transformer's factorised patterns (Child et al., 2019): strided and fixed, each as
its two heads or their union."""
from __future__ import annotations

from torch import Tensor

from .core import MaskMod
from .registry import SPAN, arg, pattern

_STRIDED_PARTS = ("both", "local", "stride")
_FIXED_PARTS = ("both", "block", "summary")


@pattern("Strided (Sparse Transformer)", "A: i − l < j ≤ i; B: (i − j) mod l = 0; both: A or B",
         stride=arg("the stride l", default=8, minimum=1, fits=SPAN),
         part=arg("which head", choices=_STRIDED_PARTS))
def strided(stride: int, *, part: str = "both") -> MaskMod:
    """Sparse Transformer strided attention (Child et al., 2019).

    Head A (``part="local"``): keep ``i - stride < j <= i``. Head B (``part="stride"``): keep
    ``(i - j) mod stride == 0`` (both directions; AND with ``causal()`` for a decoder).
    ``part="both"`` keeps the union (the paper's merged head).

    Args:
        stride: the stride ``l`` (>= 1).
        part: ``"both"``, ``"local"`` or ``"stride"``.

    Returns:
        The ``mask_mod``.
    """

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        d = q_idx - kv_idx
        a = (d >= 0) & (d < stride)
        s = d % stride == 0
        return a if part == "local" else s if part == "stride" else a | s

    return mask_mod


@pattern("Fixed (Sparse Transformer)", "A: ⌊j/l⌋ = ⌊i/l⌋; B: j mod l ≥ l − c; both: A or B",
         stride=arg("block length l", default=8, minimum=1, fits=SPAN),
         summary=arg("summary positions c per block", default=1, minimum=1),
         part=arg("which head", choices=_FIXED_PARTS))
def fixed(stride: int, summary: int, *, part: str = "both") -> MaskMod:
    """Sparse Transformer fixed attention (Child et al., 2019).

    Head A (``part="block"``): keep ``j // stride == i // stride``. Head B (``part="summary"``):
    keep ``j mod stride >= stride - summary`` (the last ``summary`` positions of every block).
    ``part="both"`` keeps the union.

    Args:
        stride: the block length ``l`` (>= 1).
        summary: ``c``, summary positions per block (``1 <= c <= l``).
        part: ``"both"``, ``"block"`` or ``"summary"``.

    Returns:
        The ``mask_mod``.
    """
    if summary > stride:
        raise ValueError(f"summary ({summary}) must be at most stride ({stride})")

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        a = (q_idx // stride) == (kv_idx // stride)
        s = (kv_idx % stride) >= (stride - summary)
        return a if part == "block" else s if part == "summary" else a | s

    return mask_mod
