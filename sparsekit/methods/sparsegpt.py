"""SparseGPT (Frantar & Alistarh, 2023): per layer, ``H = 2 X^T X / n`` (n = calibration samples, i.e.
sequences or images, as the reference counts them) dampened by ``0.01 * mean(diag H)``; the upper
Cholesky factor of ``H^-1`` drives a column-by-column pass in blocks of 128 that chooses the mask by
``w^2 / [H^-1]_ii^2`` and spreads each pruned weight's error over the columns not yet visited, so the
kept weights are rewritten. Runs in the shared calibration forward (``calibration.sequential_prune``)."""
from __future__ import annotations

from typing import Sequence, TypedDict

import torch
from torch import nn

from ..masks import unstructured_mask
from .base import Method, register
from .calibration import InputStats, LayerInputs, check_calibration, sequential_prune
from .columnpass import column_pass
from .types import Calibration, MethodOutput, ProgressFn, PruneSettings, one_thread

SPARSEGPT_BLOCK = 128
"""Columns per SparseGPT block (the paper's and reference code's value)."""
SPARSEGPT_DAMP = 0.01
"""SparseGPT dampening: ``lambda = 0.01 * mean(diag H)``."""


class SparseGPTInfo(TypedDict):
    """What ``sparsegpt_prune`` reports besides the weight and the mask."""

    damp: float
    """The dampening used (a fraction of ``mean(diag H)``; raised when H was not positive definite)."""
    damp_raised: bool
    """Whether it had to be raised above the requested one."""
    loss: float
    """The algorithm's own estimate of the increase in ``||WX - W'X||^2``."""


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    blocksize: int = SPARSEGPT_BLOCK,
    damp: float = SPARSEGPT_DAMP,
) -> tuple[torch.Tensor, torch.Tensor, SparseGPTInfo]:
    """SparseGPT on one weight matrix: choose the mask and rewrite the kept weights.

    Args:
        weight: ``[rows, cols]``; N:M groups are M consecutive columns.
        hessian: ``[cols, cols]``, ``2 X^T X / n`` of the layer's calibration inputs.
        sparsity: unstructured: fraction pruned in every block of ``blocksize`` columns.
        nm: ``(n, m)``: keep ``n`` of every ``m`` consecutive columns (N = kept).
        blocksize: columns per block (lowered to a multiple of M for N:M).
        damp: dampening as a fraction of ``mean(diag H)``.

    Returns:
        ``(new weight, mask True = kept, info)``; pruned entries of the new weight are 0; info has
        ``damp`` (the dampening used, raised when H was not positive definite) and ``loss`` (the
        algorithm's own estimate of the increase in ``||WX - W'X||^2``).

    Threads: the factorisation and the lazy block updates are large BLAS calls and use torch's
    threads; on the CPU the column-by-column pass inside each block is one compiled kernel whose
    threads (at most torch's count) split the rows, which are independent there, so the result does
    not depend on the thread count.
    """
    if (sparsity is None) == (nm is None):
        raise ValueError("give exactly one of sparsity (unstructured) or nm=(n, m)")
    return _sparsegpt(weight, hessian, sparsity, nm, blocksize, damp)


def _inverse_upper_cholesky(Hrev: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``Hd^-1`` (``U^T U = Hd^-1``) in float32, given
    ``Hrev = J Hd J`` (``Hd`` with rows and columns in reverse order), without forming ``Hd^-1``.

    With ``J Hd J = L L^T`` (lower Cholesky), ``Hd^-1 = (J L^-1 J)^T (J L^-1 J)`` and ``J L^-1 J``
    is upper triangular with a positive diagonal, so by uniqueness it is ``U``: one Cholesky and one
    triangular inverse (2/3 n^3 flops) instead of Cholesky, ``cholesky_inverse`` and a second
    Cholesky (4/3 n^3). Raises ``LinAlgError`` when ``Hd`` is not positive definite."""
    n = Hrev.shape[0]
    L = torch.linalg.cholesky(Hrev)
    U = torch.zeros(n, n, dtype=torch.float32, device=Hrev.device)
    # L^-1 by column panels: columns a:b of L^-1 are zero above row a and only need L[a:, a:], so
    # the triangular solves cost n^3/3 in all (a solve against the full identity costs n^3).
    # Each panel goes straight to its reversed place in U: U[n-1-i, n-1-j] = L^-1[i, j].
    panel = 512
    for a in range(0, n, panel):
        b = min(a + panel, n)
        rhs = torch.zeros(n - a, b - a, dtype=L.dtype, device=L.device)
        rhs.diagonal().fill_(1.0)
        U[: n - a, n - b : n - a] = torch.linalg.solve_triangular(L[a:, a:], rhs, upper=False).flip(0, 1)
    return U


def _nm_pruned(score: torch.Tensor, n: int, before: torch.Tensor) -> torch.Tensor:
    """Which entries of each column of ``score [m, rows]`` (contiguous) are pruned when the ``n``
    largest are kept; among equal scores the lower index wins (a stable descending sort's order):
    entry k is outranked by every l < k with ``s_l >= s_k`` and every l > k with ``s_l > s_k``.
    ``before [m, m, 1]``: ``before[k, l] = l < k``."""
    s_k, s_l = score.unsqueeze(1), score.unsqueeze(0)  # [m (k), 1, rows], [1, m (l), rows]
    rank = torch.where(before, s_l >= s_k, s_l > s_k).sum(1, dtype=torch.int32)
    return rank >= n


def _nm_before(m: int, device: torch.device) -> torch.Tensor:
    idx = torch.arange(m, device=device)
    return (idx.unsqueeze(1) > idx.unsqueeze(0)).unsqueeze(-1)


def _sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float | None, nm: tuple[int, int] | None,
               blocksize: int, damp: float) -> tuple[torch.Tensor, torch.Tensor, SparseGPTInfo]:
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian shape {tuple(hessian.shape)} does not match {cols} weight columns")
    if nm is not None:
        n, m = nm
        if cols % m:
            raise ValueError(f"{cols} columns are not a multiple of M={m}")
        blocksize = max(m, blocksize - blocksize % m)
    device = weight.device
    W = weight.detach().clone().float()  # float32 as the reference code
    # H in reverse order (see _inverse_upper_cholesky), factored in float64: a float32
    # factorisation (the reference code's) flips masks at near-ties.
    Hrev = hessian.detach().to(device).flip(0, 1).to(torch.float64)
    diag = Hrev.diagonal()
    # Inputs that are zero on every calibration token carry no information: the reference code
    # gives them a unit diagonal and zeroes their weights.
    dead_rev = diag == 0
    diag[dead_rev] = 1.0
    W[:, dead_rev.flip(0)] = 0.0
    base = damp * torch.mean(diag.flip(0)).item()  # summed in the original order
    undamped = diag.clone()
    used = base
    for attempt in range(6):
        try:
            diag.copy_(undamped + used)
            U = _inverse_upper_cholesky(Hrev)
            break
        except RuntimeError:  # torch.linalg.LinAlgError: not positive definite; dampen more
            used = base * 10 ** (attempt + 1)
    else:
        raise ValueError("the calibration Hessian stayed singular even with 100000x dampening")
    del Hrev, diag, undamped

    keep = torch.ones(rows, cols, dtype=torch.bool, device=device)
    # Per block, transposed so that a column is contiguous: the errors and, per entry, the factor
    # "pruned / d" (0 where kept) that turns a weight into its error.
    ErrT = torch.empty(blocksize, rows, dtype=torch.float32, device=device)
    scaleT = torch.empty(blocksize, rows, dtype=torch.float32, device=device)
    keepT = torch.empty(blocksize, rows, dtype=torch.bool, device=device)
    loss = 0.0
    threads = torch.get_num_threads()
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        # The block's own work on one thread (a few small ops, plus the column pass: one compiled
        # kernel on the CPU, whose threads split the rows; thousands of torch ops elsewhere).
        with one_thread():
            W1 = W[:, i1:i2].clone()
            ErrT1, scaleT1, keepT1 = ErrT[:count], scaleT[:count], keepT[:count]
            U1 = U[i1:i2, i1:i2]
            d = torch.diag(U1)
            d2 = d**2
            inv_d = (1.0 / d).unsqueeze(1)
            if sparsity is not None:
                keep1 = unstructured_mask(W1, float(sparsity), scores=W1**2 / d2)
                torch.mul(~keep1.t(), inv_d, out=scaleT1)
            if device.type != "cpu" or not column_pass(W1, U1, d2, inv_d, scaleT1, keepT1, ErrT1, nm, threads):
                _column_pass_torch(W1, U1, d2, inv_d, scaleT1, keepT1, ErrT1, nm)
            if nm is not None:
                keep1 = keepT1.t()
            keep[:, i1:i2] = keep1
            loss += float((ErrT1**2).sum()) / 2
            W[:, i1:i2] = W1.masked_fill_(~keep1, 0.0)
        if i2 < cols:
            # The lazy update of every later column: one matmul, on torch's threads, in place.
            W[:, i2:].addmm_(ErrT1.t(), U[i1:i2, i2:], alpha=-1.0)
    # Every pruned entry is 0 already: a block's columns are not touched after its pass.
    return W.to(weight.dtype), keep, {"damp": used, "damp_raised": used > base, "loss": loss}


def _column_pass_torch(W1: torch.Tensor, U1: torch.Tensor, d2: torch.Tensor, inv_d: torch.Tensor,
                       scaleT1: torch.Tensor, keepT1: torch.Tensor, ErrT1: torch.Tensor,
                       nm: tuple[int, int] | None) -> None:
    """The column pass of one block in torch ops (see ``columnpass``): thousands of small ops, on one
    thread (with more, each one would wait at an OpenMP barrier)."""
    count = W1.shape[1]
    n, m = nm if nm is not None else (0, 0)
    before = _nm_before(max(m, 1), W1.device)
    for i in range(count):
        if m and i % m == 0:
            score = (W1[:, i : i + m] ** 2 / d2[i : i + m]).t().contiguous()
            pruned = _nm_pruned(score, n, before)
            torch.logical_not(pruned, out=keepT1[i : i + m])
            torch.mul(pruned, inv_d[i : i + m], out=scaleT1[i : i + m])
        err = torch.mul(W1[:, i], scaleT1[i], out=ErrT1[i])
        if i + 1 < count:
            W1[:, i + 1 :].addr_(err, U1[i, i + 1 :], alpha=-1.0)


def keep_layer(layer: LayerInputs, weight: torch.Tensor, config: PruneSettings, stats: InputStats,
               notes: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's mask and rewritten weights of one layer from its Hessian."""
    W = layer.matrix(weight.detach())
    nm = (config.n, config.m) if config.pattern == "nm" else None
    new, keep, info = sparsegpt_prune(W, stats.hessian(), sparsity=None if nm else float(config.sparsity), nm=nm)
    if info["damp_raised"]:
        notes[layer.name] = f"Hessian not positive definite at 1% dampening; used {info['damp']:.3g}"
    return layer.from_matrix(keep), layer.from_matrix(new)


def run(model: nn.Module, names: Sequence[str], config: PruneSettings, calibration: Calibration | None,
        progress: ProgressFn | None) -> MethodOutput:
    check_calibration(calibration, "sparsegpt")
    assert calibration is not None
    return sequential_prune(model, names, config, calibration, progress, keep_layer, "hessian")


def column_blocks(rows: int, cols: int) -> list[int]:
    """Entries of each block of ``SPARSEGPT_BLOCK`` columns: unstructured SparseGPT prunes its
    fraction within each block, so a layer's count moves in these steps."""
    return [rows * (min(i + SPARSEGPT_BLOCK, cols) - i) for i in range(0, cols, SPARSEGPT_BLOCK)]


def layer_flops(rows: int, cols: int, tokens: int) -> tuple[float, float]:
    """Work of one layer beyond the calibration forward (``sparsekit.methods.cost``): ``2 T cols²``
    for ``XᵀX``, ``(4/3) cols³`` for the Cholesky factor and its inverse, ``rows cols²`` for the lazy
    block updates; and the column-by-column pass inside each block, ``2 rows cols 128``, a compiled
    kernel that runs slower than the matmuls (returned apart). ``XᵀX`` and the factor run in float64
    on only the lower block triangle and one Cholesky plus one triangular inverse; the float32 terms
    above stand for them, as measured (``benchmarks/bench_scale.py`` prints estimate and time)."""
    matmul = 2.0 * tokens * cols**2 + (4.0 / 3.0) * cols**3 + rows * cols**2
    return matmul, 2.0 * rows * cols * min(SPARSEGPT_BLOCK, cols)


register(Method(
    name="sparsegpt", label="SparseGPT", needs_calibration=True, run=run, layer_local=True,
    calibration_order=True, keep_layer=keep_layer, stats="hessian", count_pieces=column_blocks,
    layer_flops=layer_flops,
    help="Hessian-based (OBS) mask, and the kept weights rewritten to make up for the pruned ones"))
