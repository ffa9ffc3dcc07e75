"""Exact budgets for layer allocation (``sparsekit.allocation``): integer pruned counts that add up
to the requested total, the N:M level of each layer under a kept budget, and continuous sparsities
that equalise marginal quality loss. Pure solvers: numbers in, numbers out."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

LAYER_MAX_SPARSITY = 0.99
"""Most a single layer may be pruned under an allocation (as ``SparsifyConfig`` allows)."""


class Grid:
    """The pruned counts a method can give one layer: any count up to ``cap``, or, for a method that
    rounds its count per piece (``Method.count_pieces``: SparseGPT's ``round(s * size)`` in every block
    of 128 columns), only the sums of those."""

    def __init__(self, numel: int, blocks: Sequence[int] | None = None) -> None:
        self.numel, self.blocks = numel, list(blocks) if blocks else None
        self.cap = self.count(LAYER_MAX_SPARSITY) if self.blocks else min(numel - 1, int(LAYER_MAX_SPARSITY * numel))

    def count(self, s: float) -> int:
        if self.blocks:
            return sum(int(round(float(s) * b)) for b in self.blocks)  # unstructured_mask's rule, per block
        return int(round(float(s) * self.numel))

    def _bracket(self, k: int) -> tuple[float, float]:
        """``(lo, hi)``: ``count(lo) < k <= count(hi)`` with ``hi - lo`` at float resolution."""
        lo, hi = 0.0, LAYER_MAX_SPARSITY
        for _ in range(80):
            mid = (lo + hi) / 2
            if mid in (lo, hi):
                break
            lo, hi = (lo, mid) if self.count(mid) >= k else (mid, hi)
        return lo, hi

    def sparsity(self, k: int) -> float:
        """A sparsity at which the method prunes exactly ``k`` (a reachable count)."""
        if k <= 0:
            return 0.0
        return k / self.numel if not self.blocks else self._bracket(k)[1]

    def up(self, k: int) -> int | None:
        if not self.blocks:
            return k + 1 if k < self.cap else None
        return None if k >= self.cap else self.count(self._bracket(k + 1)[1])

    def down(self, k: int) -> int | None:
        if k <= 0:
            return None
        return k - 1 if not self.blocks else self.count(self._bracket(k)[0])

    def near(self, x: float) -> int:
        x = min(max(x, 0.0), float(self.cap))
        if not self.blocks:
            return int(round(x))
        hi = self.count(self._bracket(math.ceil(x))[1]) if x > 0 else 0
        lo = self.down(hi) if hi > x else hi
        return hi if lo is None or abs(hi - x) <= abs(x - lo) else lo


REPAIR_STEPS = 24
"""How many reachable counts above and below its greedy count ``fit_counts``' repair tries per layer."""


def fit_counts(ideal: dict[str, float], grids: dict[str, Grid], target: int) -> dict[str, int]:
    """Integer pruned counts near ``ideal`` that add up to ``target`` where the grids allow (else the
    nearest total above it: the kept share never exceeds the requested one).

    A greedy pass moves one layer a step at a time towards the target (the layer whose count ends
    closest to its ideal); on plain grids (steps of 1) it always hits the target, with the least total
    distance from the ideal. On block grids it can stop with a remainder that no single step fits
    although several layers moving together would (3 = 3 + 0 + 0 where the greedy sits at 1 + 2 + 0).
    Then a repair step runs (``_repair``): a dynamic programme over the exact offsets from the greedy
    counts, each layer limited to its ``REPAIR_STEPS`` nearest reachable counts either way. Its state
    count is bounded by those windows (no search over all combinations, no merging of states), so it
    finds the target whenever it can be reached within them, else the smallest total above it, and
    among those the counts least far from the ideal. A result the greedy pass already got exactly, or
    whose total the repair cannot improve, is returned unchanged.
    """
    counts = {n: grids[n].near(x) for n, x in ideal.items()}
    while True:
        r = target - sum(counts.values())
        if r == 0:
            return counts
        best: tuple[float, str, int] | None = None
        for n, k in counts.items():
            step = grids[n].up(k) if r > 0 else grids[n].down(k)
            if step is None or abs(step - k) > abs(r):
                continue
            # Move the layer whose count gets closest to (or least far from) its ideal.
            harm = abs(step - ideal[n]) - abs(k - ideal[n])
            if best is None or harm < best[0]:
                best = (harm, n, step)
        if best is None:
            break
        counts[best[1]] = best[2]
    if r > 0:  # the grids cannot hit the target: overshoot by the smallest step
        steps = [(grids[n].up(k), n) for n, k in counts.items()]
        ups = [(u - counts[n], n, u) for u, n in steps if u is not None]
        if ups:
            _, n, u = min(ups)
            counts[n] = u
    repaired = _repair(ideal, grids, counts, target)
    if repaired is not None and sum(repaired.values()) < sum(counts.values()):
        return repaired
    return counts


def _window(grid: Grid, k: int) -> list[int]:
    """``k`` and up to ``REPAIR_STEPS`` reachable counts either side of it, ascending."""
    below: list[int] = []
    above: list[int] = []
    lo: int | None = k
    hi: int | None = k
    for _ in range(REPAIR_STEPS):
        lo = grid.down(lo) if lo is not None else None
        hi = grid.up(hi) if hi is not None else None
        if lo is None and hi is None:
            break
        if lo is not None:
            below.append(lo)
        if hi is not None:
            above.append(hi)
    return below[::-1] + [k] + above


def _repair(ideal: dict[str, float], grids: dict[str, Grid], counts: dict[str, int],
            target: int) -> dict[str, int] | None:
    """Counts within each layer's window around ``counts`` whose total is the least one at or above
    ``target``, least far from ``ideal`` (exact DP over offset totals); None if no total reaches it."""
    names = list(counts)
    cur = np.zeros(1)  # cur[i]: least distance from the ideal with offset total i + low
    low = 0
    picks: list[tuple[list[int], int, np.ndarray]] = []
    for n in names:
        opts = _window(grids[n], counts[n])
        offs = [c - counts[n] for c in opts]
        span = offs[-1] - offs[0]
        new = np.full(len(cur) + span, np.inf)
        arg = np.zeros(len(new), dtype=np.int32)
        for j, (c, d) in enumerate(zip(opts, offs)):
            at = d - offs[0]
            cand = cur + abs(c - ideal[n])
            part = new[at:at + len(cur)]
            better = cand < part
            part[better] = cand[better]
            arg[at:at + len(cur)][better] = j
        picks.append((opts, offs[0], arg))
        cur, low = new, low + offs[0]
    start = max(0, target - sum(counts.values()) - low)
    reach = np.flatnonzero(np.isfinite(cur[start:]))
    if len(reach) == 0:
        return None
    idx = start + int(reach[0])
    out: dict[str, int] = {}
    for n, (opts, lo_off, arg) in zip(reversed(names), reversed(picks)):
        c = opts[int(arg[idx])]
        out[n] = c
        idx -= c - counts[n] - lo_off
    return {n: out[n] for n in names}


def _lower_hull(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the lower convex hull of points sorted by x (leftmost to rightmost)."""
    hull: list[int] = []
    for i, (x, y) in enumerate(points):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = points[hull[-2]], points[hull[-1]]
            if (y2 - y1) * (x - x1) >= (y - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def choose_levels(options: Sequence[Sequence[tuple[int, float]]], need: int, max_states: int = 20000) -> list[int]:
    """One option per unit with at least ``need`` pruned in all: the smallest such total, and the
    lowest total cost among the choices reaching it (a dynamic programme over totals; above
    ``max_states`` distinct totals they are merged into buckets, keeping the cheapest of each).

    Merged buckets can drop the only choices that reach ``need`` (a cheaper total just below it wins
    the bucket). A reachable ``need`` then gets a second pass that also keeps, per bucket, the state
    with the largest total: the state of the largest total overall always survives it, so some choice
    reaching ``need`` is always found, with at most twice the states. The first pass's result, where
    it reaches ``need``, is returned unchanged.

    Args:
        options: per unit, ``(pruned, cost)`` options (integer pruned counts).
        need: the least total pruned.
        max_states: bound on the totals tracked.

    Returns:
        The chosen option index per unit.

    Raises:
        ValueError: if even the largest option of every unit together stays below ``need``.
    """
    top = sum(max(p for p, _ in opts) for opts in options)
    if top < need:
        raise ValueError("the available levels cannot reach the budget")
    width = max(1, top // max_states)
    choice = _levels_pass(options, need, width, False)
    if choice is None:
        choice = _levels_pass(options, need, width, True)
    assert choice is not None, "the largest total always survives the second pass"
    return choice


def _levels_pass(options: Sequence[Sequence[tuple[int, float]]], need: int, width: int,
                 keep_top: bool) -> list[int] | None:
    """``choose_levels``' programme with buckets of ``width`` totals: per bucket the cheapest state
    (ties: the smaller total) and, with ``keep_top``, also the largest total (ties: the cheaper);
    None if no kept state reaches ``need``."""
    states: dict[tuple[int, int], tuple[float, int]] = {(0, 0): (0.0, 0)}  # (bucket, slot) -> (cost, total)
    back: list[dict[tuple[int, int], tuple[tuple[int, int], int]]] = []
    for opts in options:
        new: dict[tuple[int, int], tuple[float, int]] = {}
        links: dict[tuple[int, int], tuple[tuple[int, int], int]] = {}
        for key, (cost, total) in states.items():
            for j, (p, c) in enumerate(opts):
                t = total + int(p)
                k = (t // width, 0)
                if k not in new or (cost + c, t) < new[k]:
                    new[k], links[k] = (cost + c, t), (key, j)
                if keep_top:
                    k = (t // width, 1)
                    if k not in new or (-t, cost + c) < (-new[k][1], new[k][0]):
                        new[k], links[k] = (cost + c, t), (key, j)
        states = new
        back.append(links)
    ends = [k for k, (_, t) in states.items() if t >= need]
    if not ends:
        return None
    key = min(ends, key=lambda k: (states[k][1], states[k][0]))
    choice = []
    for links in reversed(back):
        key, j = links[key]
        choice.append(j)
    return choice[::-1]


def spread_continuous(curves: Sequence[Sequence[tuple[float, float]]], target: float) -> list[float]:
    """Pruned amount per unit adding up to ``target``, each unit's cost linear between its points:
    greedy on the lower convex hulls (equal marginal cost), the last move taken in part.

    Args:
        curves: per unit, ``(pruned, cost)`` points sorted by pruned, starting at ``(0, 0)``.
        target: total to prune.

    Returns:
        Pruned amount per unit (real-valued).
    """
    hulls = [_lower_hull(c) for c in curves]
    # Convex hulls: slopes rise along each unit, so taking moves by slope keeps each unit's order.
    moves = sorted(((curves[u][h[k]][1] - curves[u][h[k - 1]][1]) / (curves[u][h[k]][0] - curves[u][h[k - 1]][0]), u, k)
                   for u, h in enumerate(hulls) for k in range(1, len(h)))
    out = [0.0] * len(curves)
    left = float(target)
    for _, u, k in moves:
        if left <= 0:
            break
        step = curves[u][hulls[u][k]][0] - curves[u][hulls[u][k - 1]][0]
        out[u] += min(step, left)
        left -= min(step, left)
    if left > 1e-6 * max(1.0, target):
        raise ValueError("the budget is above what the scanned sparsities reach")
    return out


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float:
    """Piecewise-linear ``y(x)`` through ``points`` (sorted by x); past the last point, its y."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1]
