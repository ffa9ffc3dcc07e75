"""SparseGPT's column pass inside one block of columns, on the CPU in one compiled kernel.

Column i is final once its own error is taken out: the kept weights stay, the pruned ones go, and
the error ``(w - q) / d = w * (pruned / d)`` is spread over the block's later columns,
``w_j <- w_j - err * U[i, j]``. An N:M group's mask is chosen when its first column comes up, after
the errors of the earlier columns have been folded into it. Rows are independent, so the kernel
runs each row's whole pass in cache and threads split the rows; the torch version
(``sparsegpt._column_pass_torch``: a few ops over all rows per column, 20,000 small ops per
GPT-2 block) stays for other devices.

The kernel gives the same bits as the torch version: its arithmetic is the same, op for op, and
where torch's ``addr_`` rounds once (a fused multiply-add in its vectorised loop) the kernel does
too. Which entries torch fuses depends on how its CPU build vectorises (on AVX2: whole runs of 16
along a row, the rest of the row rounded twice), so ``fused_width`` finds it out once by running
both on a small case; if no width reproduces torch's bits, ``column_pass`` reports that it cannot
run and the torch version is used.
"""
from __future__ import annotations

import functools
from typing import Any

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["column_pass", "fused_width"]

_ROWS_PER_TASK = 32
"""Rows per parallel task."""
_WIDTHS = (0, 8, 16, 32, 64)
"""Candidate lengths of the runs torch fuses (0: none)."""


@intrinsic
def _fma(typingctx: Any, a: Any, b: Any, c: Any) -> Any:  # numba's intrinsic protocol
    """``a * b + c`` rounded once (LLVM's fma on float32)."""
    if not (a == b == c == types.float32):
        return None
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32, f32, f32]))
        return builder.call(fn, args)
    return sig, codegen


@numba.njit(inline="always")
def _spread(w: np.ndarray, u: np.ndarray, err: np.float32, start: int, count: int,
            width: int, whole: bool) -> None:  # pragma: no cover - compiled
    # w[j] -= err * u[j] for j >= start as torch's addr_ (alpha=-1) rounds it: on a row-major
    # block, fused in the first whole runs of ``width`` along the row and twice rounded after them;
    # on a column-major block (width 0), fused along the whole row or not at all (``whole``).
    if width:
        fused_end = start + ((count - start) // width) * width
    else:
        fused_end = count if whole else start
    neg = -err
    for j in range(start, fused_end):
        w[j] = _fma(neg, u[j], w[j])  # type: ignore[call-arg]  # the intrinsic takes typingctx itself
    for j in range(fused_end, count):
        w[j] = w[j] + neg * u[j]


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _kernel(W1: np.ndarray, U1: np.ndarray, d2: np.ndarray, inv_d: np.ndarray, scaleT: np.ndarray,
            keepT: np.ndarray, errT: np.ndarray, n: int, m: int, width: int,
            fused_rows: int) -> None:  # pragma: no cover
    rows, count = W1.shape
    tasks = (rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for task in numba.prange(tasks):
        score = np.empty(max(m, 1), np.float32)
        for r in range(task * _ROWS_PER_TASK, min(rows, (task + 1) * _ROWS_PER_TASK)):
            w = W1[r]
            for i in range(count):
                if m > 0 and i % m == 0:
                    for k in range(m):
                        score[k] = w[i + k] * w[i + k] / d2[i + k]
                    for k in range(m):
                        # Outranked by every earlier member with a score >= and every later one
                        # with a score >: a stable descending sort's order (ties keep the lower index).
                        rank = 0
                        for j in range(k):
                            rank += score[j] >= score[k]
                        for j in range(k + 1, m):
                            rank += score[j] > score[k]
                        keepT[i + k, r] = rank < n
                        scaleT[i + k, r] = inv_d[i + k] if rank >= n else np.float32(0.0)
                err = w[i] * scaleT[i, r]
                errT[i, r] = err
                _spread(w, U1[i], err, i + 1, count, width, r < fused_rows)


@numba.njit(cache=True)
def _spread_rows(W: np.ndarray, err: np.ndarray, u: np.ndarray, width: int,
                 fused_rows: int) -> None:  # pragma: no cover
    for r in range(W.shape[0]):
        _spread(W[r], u, err[r], 0, W.shape[1], width, r < fused_rows)


@functools.cache
def fused_width() -> int | None:
    """The run length torch's CPU ``addr_`` fuses along a row (0: none), found by comparing bits on
    a small case with every candidate; None when no candidate gives torch's bits."""
    g = torch.Generator().manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the torch column pass runs addr_ on one thread
    try:
        cases = []  # (column-major, W, err, u, torch's result)
        for length in (1, 5, 15, 16, 17, 31, 33, 47, 50, 70, 100, 127):
            base = torch.randn(64, length + 3, generator=g)
            err, u = torch.randn(64, generator=g), torch.randn(length, generator=g)
            want = base.clone()
            want[:, 2:2 + length].addr_(err, u, alpha=-1.0)
            cases.append((False, base[:, 2:2 + length].contiguous(), err, u, want[:, 2:2 + length]))
        for rows in (1, 7, 16, 37, 64, 100):  # a transposed (Conv1D) weight's blocks are column-major
            base = torch.randn(9, rows, generator=g).t()
            err, u = torch.randn(rows, generator=g), torch.randn(6, generator=g)
            want = base.clone()
            want[:, 3:].addr_(err, u, alpha=-1.0)
            cases.append((True, base[:, 3:].contiguous(), err, u, want[:, 3:]))
    finally:
        torch.set_num_threads(before)
    for width in _WIDTHS:
        ok = True
        for colmajor, W, err, u, want in cases:
            got = W.clone()
            fused_rows = (W.shape[0] // width) * width if width else 0
            _spread_rows(got.numpy(), err.numpy(), u.numpy(), 0 if colmajor else width, fused_rows if colmajor else 0)
            ok = ok and torch.equal(got.view(torch.int32), want.view(torch.int32))
        if ok:
            return width
    return None


def column_pass(W1: torch.Tensor, U1: torch.Tensor, d2: torch.Tensor, inv_d: torch.Tensor, scaleT1: torch.Tensor,
                keepT1: torch.Tensor, ErrT1: torch.Tensor, nm: tuple[int, int] | None, threads: int) -> bool:
    """The column pass of one block, in place, on CPU float32 tensors; False (nothing done) where
    the kernel cannot give torch's bits.

    Args:
        W1: ``[rows, count]`` row- or column-major, the block's weights (updated in place).
        U1: ``[count, count]``, the block's part of the upper Cholesky factor of ``H^-1``.
        d2: ``[count]``, its squared diagonal; ``inv_d``: ``1 / diagonal``, ``[count]`` or ``[count, 1]``.
        scaleT1: ``[count, rows]`` contiguous: ``pruned / d`` per entry (unstructured: given;
            N:M: written here).
        keepT1: ``[count, rows]`` contiguous bool: N:M masks written here.
        ErrT1: ``[count, rows]`` contiguous: the errors, written here.
        nm: ``(n, m)`` or None (unstructured).
        threads: most threads the kernel may use.
    """
    width = fused_width()
    rows = W1.shape[0]
    colmajor = not W1.is_contiguous() and W1.stride(0) == 1 and W1.stride(1) == rows
    if width is None or not (W1.is_contiguous() or colmajor):
        return False
    # torch vectorises along the stride-1 dimension: along each row of a row-major block, down each
    # column of a column-major one (a transposed Conv1D weight's), where whole rows are then fused
    # or not. The kernel works on a row-major copy either way.
    fused_rows = (rows // width) * width if colmajor and width else 0
    work = W1.contiguous() if colmajor else W1
    n, m = nm if nm is not None else (0, 0)
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, threads)))  # type: ignore[attr-defined]
    try:
        _kernel(work.numpy(), U1.contiguous().numpy(), d2.contiguous().numpy(), inv_d.reshape(-1).contiguous().numpy(),
                scaleT1.numpy(), keepT1.numpy(), ErrT1.numpy(), n, m, 0 if colmajor else width, fused_rows)
    finally:
        numba.set_num_threads(previous)
    if colmajor:
        W1.copy_(work)
    return True
