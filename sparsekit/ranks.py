"""Rank statistics for the sensitivity scan: average ranks and Spearman's rank correlation."""
from __future__ import annotations

import math
from typing import Sequence


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, tied values sharing the average of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Spearman rank correlation (Pearson correlation of average ranks) over the pairs where both are
    numbers.

    Args:
        x: values.
        y: values, paired with ``x``.

    Returns:
        The correlation in [-1, 1]; None with fewer than 2 pairs or when one side is constant.
    """
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and a == a and b == b]
    if len(pairs) < 2:
        return None
    rx, ry = average_ranks([a for a, _ in pairs]), average_ranks([b for _, b in pairs])
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else None


__all__ = ["average_ranks", "spearman"]
