"""The candidates of the per-head search: each pattern family's parameter grid for inputs of a given
length (``SEARCH_FAMILIES``), and the candidate list of a choice of families."""
from __future__ import annotations

from typing import Callable, Sequence

from .specs import PatternSpec


def _window_grid(n: int) -> list[PatternSpec]:
    return [PatternSpec.of("sliding_window", window=w) for w in (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
            if w < n]


def _a_shape_grid(n: int) -> list[PatternSpec]:
    return [PatternSpec.of("a_shape", sink=s, local=w)
            for s in (1, 2, 4) for w in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if s < n and w < n]


def _vertical_slash_grid(n: int) -> list[PatternSpec]:
    sizes = (0, 1, 2, 4, 8, 16, 32)
    return [PatternSpec.of("vertical_slash", vertical=v, slash=s) for v in sizes for s in sizes if v < n and s < n]


def _block_topk_grid(n: int) -> list[PatternSpec]:
    return [PatternSpec.of("block_topk", block=b, topk=k) for b in (2, 4, 8, 16) for k in (0, 1, 2, 3, 4, 6, 8)
            if b < n and k < -(-n // b)]


def _dilated_grid(n: int) -> list[PatternSpec]:
    return [PatternSpec.of("dilated_window", window=w, dilation=d) for d in (2, 3) for w in (4, 8, 16, 32, 64)
            if w < n]


def _bigbird_grid(n: int) -> list[PatternSpec]:
    return [PatternSpec.of("bigbird", block=b, global_blocks=1, random_blocks=r) for b in (2, 4, 8) for r in (0, 1, 2)
            if b < n]


def _longformer_grid(n: int) -> list[PatternSpec]:
    return [PatternSpec.of("longformer", window=w, n_global=g) for g in (1, 2) for w in (1, 2, 4, 8, 16, 32) if w < n]


SEARCH_FAMILIES: dict[str, Callable[[int], list[PatternSpec]]] = {
    "sliding_window": _window_grid,
    "a_shape": _a_shape_grid,
    "vertical_slash": _vertical_slash_grid,
    "block_topk": _block_topk_grid,
    "dilated_window": _dilated_grid,
    "bigbird": _bigbird_grid,
    "longformer": _longformer_grid,
}
"""Family -> parameter grid for inputs of at most ``n`` tokens (sizes that would cover the whole
sequence are left out)."""
DEFAULT_FAMILIES = ("sliding_window", "a_shape", "vertical_slash", "block_topk")


def candidate_specs(families: Sequence[str], max_len: int) -> list[PatternSpec]:
    """The candidates of the chosen families for inputs of at most ``max_len`` tokens.

    Args:
        families: keys of ``SEARCH_FAMILIES``.
        max_len: longest calibration input.

    Returns:
        The specs, without duplicates, in family order.
    """
    out: list[PatternSpec] = []
    for fam in families:
        for spec in SEARCH_FAMILIES[fam](max_len):
            if spec not in out:
                out.append(spec)
    return out


__all__ = ["DEFAULT_FAMILIES", "SEARCH_FAMILIES", "candidate_specs"]
