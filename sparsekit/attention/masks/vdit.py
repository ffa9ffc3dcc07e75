"""Sparse-vDiT's patterns for video diffusion transformers: a diagonal band, bands repeating every
frame, and vertical stripes of key columns every query attends to."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .core import MAX_COLUMNS, MaskMod, _lookup, _token_table
from .local import sliding_window
from .registry import DISTANCE, SPAN, Fit, arg, pattern


@pattern("Diagonal (Sparse-vDiT)", "|i − j| ≤ w", width=arg("half-width of the band", default=4, fits=DISTANCE))
def diagonal(width: int) -> MaskMod:
    """Sparse-vDiT diagonal pattern: keep ``|i - j| <= width`` (the symmetric sliding window).

    Args:
        width: half-width of the band.

    Returns:
        The ``mask_mod``.
    """
    return sliding_window(width)


@pattern("Multi-diagonal (Sparse-vDiT)", "|i − j − kF| ≤ w for some integer k",
         width=arg("half-width of each band", default=1, fits=DISTANCE),
         period=arg("F: distance between bands", default=8, minimum=1, fits=SPAN))
def multi_diagonal(width: int, period: int) -> MaskMod:
    """Sparse-vDiT multi-diagonal pattern: keep ``|i - j - k * period| <= width`` for some integer
    ``k`` (bands repeating every ``period`` tokens, e.g. one frame of a video).

    Computed as ``(i - j + width) mod period <= 2 * width``, which is the same set.

    Args:
        width: half-width of each band.
        period: distance between bands (``F``, tokens per frame; >= 1).

    Returns:
        The ``mask_mod``.
    """

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return ((q_idx - kv_idx + width) % period) <= 2 * width

    return mask_mod


def parse_columns(text: str) -> list[int]:
    """Parse a column list such as ``"0, 3, 8-11"`` into sorted unique positions.

    Args:
        text: comma-separated positions and inclusive ranges ``a-b``.

    Returns:
        The positions.

    Raises:
        ValueError: malformed text, a reversed range, or more than ``MAX_COLUMNS`` columns.
    """
    out: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"columns must look like '0, 3, 8-11'; cannot read {part!r}") from None
        if a < 0 or b < a:
            raise ValueError(f"columns: {part!r} is not a valid position or range")
        if b - a >= MAX_COLUMNS or len(out) + (b - a + 1) > MAX_COLUMNS:
            raise ValueError(f"at most {MAX_COLUMNS} columns")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError("columns: name at least one key position, e.g. '0' or '0-3'")
    return sorted(out)


@pattern("Vertical stripe (Sparse-vDiT)", "j ∈ S for a list of key columns S",
         columns=arg("key positions, e.g. '0, 5, 8-11'", default="0",
                     fits=Fit(lambda q, kv, p: kv - 1, "as the last column",
                              measure=lambda text: max(parse_columns(text)), label="column")))
def vertical_stripe(columns: Sequence[int] | str) -> MaskMod:
    """Sparse-vDiT vertical stripe: keep ``j in columns`` (for every query).

    Args:
        columns: key positions every query attends to, as a list or as text such as
            ``"0, 5, 8-11"`` (``parse_columns``; the form a ``PatternSpec`` stores).

    Returns:
        The ``mask_mod``.
    """
    table = _token_table(parse_columns(columns) if isinstance(columns, str) else columns, "column")

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return _lookup(table, kv_idx) & (q_idx >= 0)

    return mask_mod
