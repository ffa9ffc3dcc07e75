"""The channel permutation search on one matrix: which column order lets N:M keep the most ``|w|``
(Pool & Yu, 2021; NVIDIA ASP)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..masks import nm_mask, unstructured_mask
from ..methods.types import one_thread
from ..methods.wanda import row_unstructured_mask
from ..progress import ProgressFn

PERMUTATION_CHECK_SAMPLES = 8
"""Calibration samples used to confirm that a permutation leaves the function unchanged."""

StopFn = Callable[[], bool]
"""``should_stop() -> bool``: asked between search rounds and before each layer; True ends the search."""


def nm_kept_magnitude(matrix: torch.Tensor, n: int, m: int) -> float:
    """Sum of ``|w|`` that N:M (keep ``n`` of every ``m`` along rows) keeps in ``matrix``."""
    a = matrix.detach().abs().double()
    return float(a[nm_mask(a, n, m)].sum())


def unstructured_kept_magnitude(matrix: torch.Tensor, density: float, *, per_row: bool = False) -> float:
    """Sum of ``|w|`` kept by unstructured magnitude pruning at ``density`` (kept fraction), over the
    whole matrix (the app's layer-wise unstructured pattern) or within each row."""
    a = matrix.detach().abs().double()
    if per_row:
        return float(a[row_unstructured_mask(a, 1.0 - density)].sum())
    return float(a[unstructured_mask(a, 1.0 - density)].sum())


@dataclass
class PermutationSearch:
    """Result of a channel-permutation search on one matrix."""

    perm: torch.Tensor
    """New column order: ``matrix[:, perm]`` is the permuted matrix."""
    kept_before: float
    """``|w|`` kept by N:M in the original order."""
    kept_after: float
    """``|w|`` kept by N:M after the permutation (never below ``kept_before``)."""
    kept_unstructured: float
    """``|w|`` kept by layer-wise unstructured magnitude pruning at the same density."""
    kept_row_bound: float
    """``|w|`` kept by per-row unstructured pruning at the same density: no N:M mask, under any
    permutation, keeps more (each row keeps exactly that many)."""
    swaps: int
    rounds: int
    seconds: float
    stopped: bool = False
    """True when ``should_stop`` ended the search before a local optimum or a limit (the
    permutation is still valid and never lowers the kept magnitude)."""

    @property
    def recovered_share(self) -> float:
        """Share of the gap between plain N:M and unstructured that the permutation recovers."""
        gap = self.kept_unstructured - self.kept_before
        return (self.kept_after - self.kept_before) / gap if gap > 0 else 0.0


def _group_stats(a: torch.Tensor, cols: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each member p of one group (columns ``cols`` of ``a``): per-row sum of the top n-1 of the
    other members, per-row n-th largest of the others, and the group's current kept sum."""
    g = a[:, cols]  # [R, m]
    m = g.shape[1]
    kept = g.topk(n, dim=1).values.sum().item()
    s_list, t_list = [], []
    for j in range(m):
        others = torch.cat([g[:, :j], g[:, j + 1 :]], dim=1)
        top = others.topk(n, dim=1).values  # descending
        s_list.append(top[:, : n - 1].sum(1))
        t_list.append(top[:, n - 1])
    return torch.stack(s_list, 1), torch.stack(t_list, 1), torch.tensor(kept, dtype=a.dtype)


def _exact_swap_gain(a: torch.Tensor, perm: torch.Tensor, m: int, n: int, pp: int, pq: int) -> float:
    gp, gq = pp // m, pq // m
    g1, g2 = perm[gp * m : (gp + 1) * m].clone(), perm[gq * m : (gq + 1) * m].clone()
    old = a[:, g1].topk(n, dim=1).values.sum() + a[:, g2].topk(n, dim=1).values.sum()
    g1[pp - gp * m], g2[pq - gq * m] = perm[pq], perm[pp]
    new = a[:, g1].topk(n, dim=1).values.sum() + a[:, g2].topk(n, dim=1).values.sum()
    return float(new - old)


def search_permutation(
    matrix: torch.Tensor,
    n: int,
    m: int,
    *,
    max_rounds: int = 100,
    max_seconds: float = 30.0,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PermutationSearch:
    """Greedy channel-swap search for a column permutation that raises the N:M-kept magnitude.

    Swapping column p (group G) with column q (group G') changes only G and G'. With the others of
    G fixed, the kept magnitude of G with q in p's place is, per row, the sum of the top n-1 others
    plus ``max(|w_q|, n-th largest other)``; summed over rows, ``max(a, t) = (a + t + |a - t|)/2``
    turns the gains of all pairs at once into one L1 distance matrix (``torch.cdist``). Each round
    applies the best positive swaps that touch disjoint groups, so the kept magnitude rises
    strictly with every swap, and stops at a local optimum (no single swap helps).

    Args:
        matrix: ``[rows, cols]``; N:M groups are M consecutive columns; ``cols % m == 0``.
        n: kept per group.
        m: group size.
        max_rounds: most rounds of swaps.
        max_seconds: time limit (the search stops after the round that passes it).
        progress: optional ``progress(fraction, message)`` after every round; the fraction is the
            larger of the rounds and the time used (of ``max_rounds``, ``max_seconds``), so it only
            rises, and it is 1 at the end.
        should_stop: optional callable asked after every round; True ends the search there
            (``stopped`` is then set).

    Returns:
        The permutation and the kept magnitudes before/after and of the unstructured references.
    """
    if matrix.dim() != 2:
        raise ValueError(f"search_permutation needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    rows, cols = matrix.shape
    if not 1 <= n < m:
        raise ValueError(f"N:M needs 1 <= N < M, got N={n}, M={m}")
    if cols % m:
        raise ValueError(f"{cols} columns are not a multiple of M={m}")
    with one_thread():
        return _search(matrix, n, m, max_rounds, max_seconds, progress, should_stop)


def _search(matrix: torch.Tensor, n: int, m: int, max_rounds: int, max_seconds: float,
            progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> PermutationSearch:
    rows, cols = matrix.shape
    start_time = time.perf_counter()
    a = matrix.detach().abs().double()
    n_groups = cols // m
    perm = torch.arange(cols)
    before = nm_kept_magnitude(a, n, m)
    # Candidate gains are ranked in float32 (cdist dominates the cost); each chosen swap's gain is
    # then recomputed exactly in float64 before it is applied, so the kept magnitude never drops.
    a32 = a.float()
    a_t = a32.T.contiguous()  # [cols, rows]
    colsum = a32.sum(0)  # [cols]
    # Per column id: const[p] and the thresholds t[:, p] describing "p's group without p".
    s_sum = torch.zeros(cols)
    t_mat = torch.zeros(rows, cols)
    group_kept = torch.zeros(n_groups)
    col_group = torch.empty(cols, dtype=torch.long)  # group of each column id

    def refresh(groups: list[int]) -> torch.Tensor:
        touched = []
        for g in groups:
            members = perm[g * m : (g + 1) * m]
            s, t, kept = _group_stats(a32, members, n)
            s_sum[members] = s.sum(0)
            t_mat[:, members] = t
            group_kept[g] = kept
            col_group[members] = g
            touched.append(members)
        return torch.cat(touched)

    def d_rows(ids: torch.Tensor) -> torch.Tensor:
        # D[p, x] = change of p's group when column x takes p's place.
        t_cols = t_mat[:, ids].T.contiguous()  # [k, rows]
        maxsum = 0.5 * (colsum.unsqueeze(0) + t_cols.sum(1, keepdim=True) + torch.cdist(t_cols, a_t, p=1))
        return s_sum[ids].unsqueeze(1) + maxsum - group_kept[col_group[ids]].unsqueeze(1)

    refresh(list(range(n_groups)))
    D = d_rows(torch.arange(cols))
    tol = 1e-9 * max(before, 1e-30)
    lower = torch.ones(cols, cols, dtype=torch.bool).tril()
    swaps = rounds = 0
    stopped = False
    while rounds < max_rounds and time.perf_counter() - start_time < max_seconds:
        if should_stop is not None and should_stop():
            stopped = True
            break
        rounds += 1
        gain = D + D.T
        # Each unordered pair once, and never two columns of the same group.
        gain.masked_fill_(lower | (col_group.unsqueeze(0) == col_group.unsqueeze(1)), -math.inf)
        flat = gain.reshape(-1)
        k = min(flat.numel(), max(4 * n_groups, 64))
        values, idx = flat.topk(k)
        used: set[int] = set()
        chosen: list[tuple[int, int]] = []
        pos = torch.empty(cols, dtype=torch.long)
        pos[perm] = torch.arange(cols)
        for v, i in zip(values.tolist(), idx.tolist()):
            if v <= tol:
                break
            p, q = divmod(i, cols)
            gp, gq = int(col_group[p]), int(col_group[q])
            if gp in used or gq in used:
                continue
            if _exact_swap_gain(a, perm, m, n, int(pos[p]), int(pos[q])) <= tol:
                continue
            used.update((gp, gq))
            chosen.append((p, q))
        if not chosen:
            break
        for p, q in chosen:
            pp, pq = int(pos[p]), int(pos[q])
            perm[pp], perm[pq] = q, p
        swaps += len(chosen)
        touched = refresh(sorted(used))
        D[touched] = d_rows(touched)
        if progress is not None:
            used_share = max(rounds / max_rounds, (time.perf_counter() - start_time) / max_seconds)
            progress(min(used_share, 1.0), f"round {rounds}, {swaps} swaps")
    if progress is not None:
        progress(1.0, f"{rounds} rounds, {swaps} swaps")
    after = nm_kept_magnitude(a[:, perm], n, m)
    if after < before:  # cannot happen with exact gains; guard against rounding all the same
        perm, after = torch.arange(cols), before
    density = n / m
    return PermutationSearch(
        perm=perm,
        kept_before=before,
        kept_after=after,
        kept_unstructured=unstructured_kept_magnitude(a, density),
        kept_row_bound=unstructured_kept_magnitude(a, density, per_row=True),
        swaps=swaps,
        rounds=rounds,
        seconds=time.perf_counter() - start_time,
        stopped=stopped,
    )
