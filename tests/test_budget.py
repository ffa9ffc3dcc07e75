"""budget: the exact solvers of layer allocation (pruned-count grids, fitting counts to a total, N:M
levels under a budget, continuous spreading), each checked against a brute-force search over small
cases or an exact enumeration written here."""
import itertools
import math
import random
from fractions import Fraction

import pytest
import torch

from sparsekit.budget import (
    LAYER_MAX_SPARSITY,
    Grid,
    choose_levels,
    fit_counts,
    interpolate,
    spread_continuous,
)
from sparsekit.methods.sparsegpt import sparsegpt_prune


def reachable_counts(grid: Grid) -> list[int]:
    """Every pruned count the grid's method can give, by exact enumeration: without blocks, 0 to the
    cap; with blocks, ``round(s * b)`` steps up at s = (k + 1/2) / b, so walking those step points in
    order (exact fractions) lists every sum the blocks can reach together."""
    if not grid.blocks:
        return list(range(grid.cap + 1))
    steps: dict[Fraction, set[int]] = {}
    for b in grid.blocks:
        for k in range(b):
            steps.setdefault(Fraction(2 * k + 1, 2 * b), set()).add(b)
    out, total = [0], 0
    for t in sorted(steps):
        # Blocks of different sizes stepping at the same point would make the order at that point
        # depend on float rounding; the cases below are chosen so that it does not happen.
        assert len(steps[t]) == 1, "test case with coinciding step points"
        total += sum(1 for b in grid.blocks if b in steps[t])
        if total > grid.cap:
            break
        out.append(total)
    return out


# Moved from test_allocation.py -------------------------------------------------------------------

def test_sparsegpt_grid_counts_match_sparsegpt():
    torch.manual_seed(0)
    W, X = torch.randn(3, 300), torch.randn(50, 300)
    grid = Grid(900, [3 * 128, 3 * 128, 3 * 44])
    for k in (0, 1, 17, 450, 451, 890):
        for target in (grid.up(k) or k, grid.near(k)):
            s = grid.sparsity(target)
            _, keep, _ = sparsegpt_prune(W, X.T @ X, sparsity=s)
            assert int((~keep).sum()) == target
    # Steps of 2 where both full blocks move together, finer where the last block moves alone.
    assert {grid.up(k) - k for k in range(0, 800, 7)} <= {1, 2, 3}


def test_fit_counts_hits_the_target_or_overshoots_by_a_step():
    grids = {"a": Grid(1000), "b": Grid(500)}
    ideal = {"a": 400.4, "b": 300.4}  # adds up to 700.8; rounding each gives 700
    counts = fit_counts(ideal, grids, 701)
    assert sum(counts.values()) == 701 and all(abs(counts[n] - ideal[n]) < 1 for n in ideal)
    # SparseGPT-like layers whose counts only move in steps of 2: an odd target cannot be met.
    even = {"a": Grid(512, [256, 256]), "b": Grid(512, [256, 256])}
    counts = fit_counts({"a": 100.0, "b": 101.0}, even, 201)
    assert sum(counts.values()) == 202


def test_choose_levels_matches_brute_force():
    rng = random.Random(0)
    for _ in range(60):
        units = rng.randint(1, 4)
        options = []
        for _ in range(units):
            size = rng.choice([4, 8, 12, 20])
            options.append([(size * (4 - n) // 4, round(rng.uniform(0, 5), 2) if n < 4 else 0.0) for n in (4, 3, 2, 1)])
        top = sum(o[-1][0] for o in options)
        need = rng.randint(0, top)
        best = min(itertools.product(*[range(4)] * units),
                   key=lambda c: (sum(options[u][j][0] for u, j in enumerate(c)) < need,
                                  sum(options[u][j][0] for u, j in enumerate(c)),
                                  sum(options[u][j][1] for u, j in enumerate(c))))
        got = choose_levels(options, need)
        total = lambda c, i: sum(options[u][j][i] for u, j in enumerate(c))  # noqa: E731
        assert total(got, 0) >= need
        assert total(got, 0) == total(best, 0)
        assert total(got, 1) == pytest.approx(total(best, 1))


def test_spread_continuous_is_optimal_on_convex_curves():
    # Drops convex in the pruned amount: equal marginal drop is optimal; compare with a fine grid search.
    curves = [[(0, 0), (50, 1), (100, 4)], [(0, 0), (100, 0.5), (200, 3)]]
    got = spread_continuous(curves, 150)
    assert sum(got) == pytest.approx(150)

    def cost(u, x):
        pts = curves[u]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    brute = min(cost(0, a) + cost(1, 150 - a) for a in range(0, 101))
    assert cost(0, got[0]) + cost(1, got[1]) == pytest.approx(brute)


# Grid -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("numel", [1, 2, 50, 99, 100, 101, 1000])
def test_plain_grid_cap_and_counts(numel):
    grid = Grid(numel)
    # At most 99 % pruned, and always at least one weight kept.
    assert grid.cap == min(numel - 1, math.floor(LAYER_MAX_SPARSITY * numel))
    for k in range(grid.cap + 1):
        assert grid.count(grid.sparsity(k)) == k
        assert grid.up(k) == (k + 1 if k < grid.cap else None)
        assert grid.down(k) == (k - 1 if k > 0 else None)
    assert grid.sparsity(0) == 0.0 and grid.sparsity(-3) == 0.0


# Per-block sizes of SparseGPT layers (rows x 128 columns per block, a partial last block).
BLOCKS = [[384, 384, 132], [640, 360], [256, 4], [896, 896, 7], [12, 5], [128]]


@pytest.mark.parametrize("blocks", BLOCKS)
def test_block_grid_steps_are_the_reachable_counts(blocks):
    grid = Grid(sum(blocks), blocks)
    reach = reachable_counts(grid)
    assert grid.cap == reach[-1] == sum(round(LAYER_MAX_SPARSITY * b) for b in blocks)
    for k in range(grid.cap + 1):
        assert grid.up(k) == min((r for r in reach if r > k), default=None), k
        assert grid.down(k) == max((r for r in reach if r < k), default=None), k
    for r in reach:  # every reachable count has a sparsity that gives exactly it
        s = grid.sparsity(r)
        assert 0.0 <= s <= LAYER_MAX_SPARSITY and grid.count(s) == r


@pytest.mark.parametrize("blocks", [None, *BLOCKS])
def test_near_is_a_nearest_reachable_count(blocks):
    numel = sum(blocks) if blocks else 333
    grid = Grid(numel, blocks)
    reach = reachable_counts(grid)
    rng = random.Random(len(reach))
    for x in [rng.uniform(-10, grid.cap + 10) for _ in range(400)] + [0.0, float(grid.cap), 1e9, -1e9]:
        clipped = min(max(x, 0.0), grid.cap)
        got = grid.near(x)
        assert got in reach
        assert abs(got - clipped) == pytest.approx(min(abs(r - clipped) for r in reach)), x


# fit_counts -------------------------------------------------------------------------------------

def test_fit_counts_on_plain_grids_is_exact_and_least_far_from_ideal():
    # Brute force over every combination of counts adding up to the target: the fit hits the target
    # and its total distance from the ideal counts is the least possible.
    rng = random.Random(1)
    for _ in range(200):
        sizes = [rng.randint(2, 12) for _ in range(rng.randint(1, 3))]
        grids = {f"l{i}": Grid(size) for i, size in enumerate(sizes)}
        ideal = {n: rng.uniform(-1, g.numel) for n, g in grids.items()}
        target = rng.randint(0, sum(g.cap for g in grids.values()))
        got = fit_counts(ideal, grids, target)
        assert sum(got.values()) == target
        assert all(0 <= got[n] <= g.cap for n, g in grids.items())
        best = min(sum(abs(k - ideal[n]) for n, k in zip(grids, combo))
                   for combo in itertools.product(*[range(g.cap + 1) for g in grids.values()])
                   if sum(combo) == target)
        assert sum(abs(got[n] - ideal[n]) for n in grids) == pytest.approx(best)


BLOCK_CHOICES = [[6, 6], [8, 3], [5], [10, 4, 4], [7, 7, 2]]


def test_fit_counts_on_block_grids_hits_the_target_or_the_nearest_total_above():
    # Every count is one its layer can reach, and the total is the target where the grids reach it
    # together, else the nearest total above (the kept share never exceeds the requested one).
    rng = random.Random(2)
    for _ in range(200):
        grids = {}
        for i in range(rng.randint(1, 3)):
            blocks = rng.choice(BLOCK_CHOICES)
            grids[f"l{i}"] = Grid(sum(blocks), blocks)
        reach = {n: reachable_counts(g) for n, g in grids.items()}
        totals = {sum(c) for c in itertools.product(*reach.values())}
        ideal = {n: rng.uniform(0, g.numel) for n, g in grids.items()}
        target = rng.randint(0, sum(g.cap for g in grids.values()))
        got = fit_counts(ideal, grids, target)
        assert all(got[n] in reach[n] for n in grids)
        # The least total the grids reach at or above the target: the target itself where reachable.
        assert sum(got.values()) == min(t for t in totals if t >= target)


def test_fit_counts_hits_a_target_the_block_grids_can_reach():
    grids = {"a": Grid(11, [8, 3]), "b": Grid(16, [7, 7, 2]), "c": Grid(16, [7, 7, 2])}
    ideal = {"a": 1.35, "b": 4.27, "c": 3.14}
    assert 3 in reachable_counts(grids["a"])  # 3 + 0 + 0 reaches the target
    assert sum(fit_counts(ideal, grids, 3).values()) == 3


# choose_levels ----------------------------------------------------------------------------------

def test_choose_levels_brute_force_on_uneven_options():
    # Options of any shape (not only the N:M ladder above): the smallest reachable total at or above
    # the need, and the cheapest choice among those reaching it.
    rng = random.Random(3)
    for _ in range(300):
        options = [[(rng.randint(0, 30), round(rng.uniform(0, 5), 2)) for _ in range(rng.randint(1, 4))]
                   for _ in range(rng.randint(1, 4))]
        need = rng.randint(0, sum(max(p for p, _ in o) for o in options))
        total = lambda c, i: sum(options[u][j][i] for u, j in enumerate(c))  # noqa: E731
        best = min(itertools.product(*[range(len(o)) for o in options]),
                   key=lambda c: (total(c, 0) < need, total(c, 0), total(c, 1)))
        got = choose_levels(options, need)
        assert len(got) == len(options) and all(0 <= j < len(o) for j, o in zip(got, options))
        assert total(got, 0) == total(best, 0) >= need
        assert total(got, 1) == pytest.approx(total(best, 1))


def test_choose_levels_refuses_an_unreachable_budget():
    with pytest.raises(ValueError, match="cannot reach the budget"):
        choose_levels([[(0, 0.0), (4, 1.0)], [(0, 0.0), (2, 1.0)]], 7)
    assert choose_levels([[(0, 0.0), (4, 1.0)], [(0, 0.0), (2, 1.0)]], 6) == [1, 1]
    assert choose_levels([], 0) == []


def test_choose_levels_with_buckets_still_reaches_a_reachable_need():
    options = [[(0, 0.0), (50_000, 0.0)], [(0, 0.0), (1, 1.0)]]  # 50 001 totals: buckets of 2
    got = choose_levels(options, 50_001)
    assert sum(options[u][j][0] for u, j in enumerate(got)) == 50_001



def test_choose_levels_with_few_states_always_reaches_a_reachable_need():
    # Buckets merge totals (approximate), but any reachable need gets a choice reaching it, and one
    # no worse in total than what the largest options give.
    rng = random.Random(5)
    for _ in range(300):
        options = [[(rng.randint(0, 40), round(rng.uniform(0, 5), 2)) for _ in range(rng.randint(1, 4))]
                   for _ in range(rng.randint(1, 5))]
        top = sum(max(p for p, _ in o) for o in options)
        need = rng.randint(max(0, top - 12), top)
        got = choose_levels(options, need, max_states=rng.choice([2, 3, 5, 8]))
        assert len(got) == len(options) and all(0 <= j < len(o) for j, o in zip(got, options))
        assert need <= sum(options[u][j][0] for u, j in enumerate(got)) <= top

# spread_continuous and interpolate ---------------------------------------------------------------

def convex_curve(rng, top=14):
    """``(pruned, cost)`` points from (0, 0) with integer pruned amounts and rising slopes."""
    xs = sorted(rng.sample(range(1, top + 1), rng.randint(1, 4)))
    slopes = sorted(rng.uniform(0, 3) for _ in xs)
    points, x0, y = [(0, 0.0)], 0, 0.0
    for x, s in zip(xs, slopes):
        y += s * (x - x0)
        points.append((x, y))
        x0 = x
    return points


def test_spread_continuous_brute_force_on_random_convex_curves():
    # Integer break points and an integer target: the optimum is integral (only the last segment
    # taken is taken in part), so a search over every integer split finds it.
    rng = random.Random(4)
    for _ in range(150):
        curves = [convex_curve(rng) for _ in range(rng.randint(1, 3))]
        target = rng.randint(0, sum(c[-1][0] for c in curves))
        got = spread_continuous(curves, target)
        assert sum(got) == pytest.approx(target)
        assert all(0 <= g <= c[-1][0] + 1e-9 for g, c in zip(got, curves))
        cost = lambda split: sum(interpolate(c, x) for c, x in zip(curves, split))  # noqa: E731
        brute = min(cost(split) for split in itertools.product(*[range(c[-1][0] + 1) for c in curves])
                    if sum(split) == target)
        assert cost(got) == pytest.approx(brute)


def test_spread_continuous_refuses_a_target_above_the_curves():
    curves = [[(0, 0.0), (10, 1.0)], [(0, 0.0), (5, 2.0)]]
    assert spread_continuous(curves, 15) == pytest.approx([10, 5])
    assert spread_continuous(curves, 0) == [0.0, 0.0]
    with pytest.raises(ValueError, match="above what the scanned sparsities reach"):
        spread_continuous(curves, 16)


def test_interpolate_by_hand():
    points = [(0.0, 0.0), (2.0, 1.0), (4.0, 5.0)]
    assert interpolate(points, 0.0) == 0.0
    assert interpolate(points, 1.0) == pytest.approx(0.5)
    assert interpolate(points, 2.0) == pytest.approx(1.0)
    assert interpolate(points, 3.0) == pytest.approx(3.0)
    assert interpolate(points, 4.0) == pytest.approx(5.0)
    assert interpolate(points, 9.0) == 5.0  # past the last point: its y
    assert interpolate([(1.0, 2.0), (1.0, 3.0)], 1.0) == 3.0  # a vertical step: the later y
