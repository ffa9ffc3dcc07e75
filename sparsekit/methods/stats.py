"""What the calibrated methods keep of a layer's inputs: per-feature squared norms (Wanda) and
``XᵀX`` (SparseGPT), accumulated in float64 over the calibration forward.

Both are exact sums of float32 products in float64 (the square or product of two float32 values is
exact in float64), so the order they are summed in changes them only in the last float64 bits,
far below what the float32 scores computed from them can see. The fast paths below use that:

- norms: one pass over the float32 rows in a compiled kernel that squares and sums each feature in
  float64 (the torch route made three float64 copies of the rows: ``double()``, ``pow(2)``, then
  the sum); each feature is summed over the rows in row order, so the result does not depend on the
  thread count;
- ``XᵀX``: only the blocks on and below the diagonal are multiplied (the product is symmetric),
  and the upper triangle is their mirror: about 58 % of the multiplications for 3,072 inputs.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

__all__ = ["InputStats", "gram", "square_sums"]

_COLUMNS_PER_TASK = 128
"""Features per parallel task of the norms kernel (a 768-feature input gives 6 tasks)."""
GRAM_BLOCK = 512
"""Columns per block of the blocked ``XᵀX``; inputs this narrow or narrower take one full product."""


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _square_sums_kernel(x: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    rows, cols = x.shape
    tasks = (cols + _COLUMNS_PER_TASK - 1) // _COLUMNS_PER_TASK
    for task in numba.prange(tasks):
        a = task * _COLUMNS_PER_TASK
        b = min(cols, a + _COLUMNS_PER_TASK)
        acc = np.zeros(b - a, np.float64)
        for r in range(rows):
            for j in range(a, b):
                v = np.float64(x[r, j])
                acc[j - a] += v * v
        for j in range(a, b):
            out[j] = acc[j - a]


def square_sums(X: torch.Tensor) -> torch.Tensor:
    """``sum_t X[t, j]^2`` for every column ``j``, in float64.

    Args:
        X: ``[tokens, features]``, any float dtype and device.

    Returns:
        float64 ``[features]`` on ``X``'s device.
    """
    if X.device.type == "cpu" and X.dtype in (torch.float32, torch.float64) and X.dim() == 2 and X.shape[0]:
        arr = X.detach().contiguous().numpy()
        out = np.empty(arr.shape[1], np.float64)
        _square_sums_kernel(arr, out)
        return torch.from_numpy(out)
    Xd = X.detach().to(torch.float64, copy=True)
    return Xd.mul_(Xd).sum(0)


def gram(X: torch.Tensor) -> torch.Tensor:
    """``XᵀX`` in float64, computed as its lower block triangle and mirrored.

    Args:
        X: ``[tokens, features]``, any float dtype and device.

    Returns:
        float64 ``[features, features]``, exactly symmetric.
    """
    Xd = X.detach().to(torch.float64)
    cols = Xd.shape[1]
    if cols <= GRAM_BLOCK:
        return Xd.T @ Xd
    H = torch.empty(cols, cols, dtype=torch.float64, device=Xd.device)
    starts = range(0, cols, GRAM_BLOCK)
    for a in starts:
        b = min(a + GRAM_BLOCK, cols)
        H[a:b, :b] = Xd[:, a:b].T @ Xd[:, :b]  # rows a:b of the lower block triangle
    for a in starts:
        b = min(a + GRAM_BLOCK, cols)
        H[a:b, b:] = H[b:, a:b].T
        block = H[a:b, a:b]
        block.copy_(block.tril() + block.tril(-1).T)
    return H


class InputStats:
    """What a calibrated method needs of one layer's inputs, accumulated over forward calls.

    SparseGPT: ``X^T X`` and the number of calibration *samples* (sequences or images), so that
    ``H = 2 X^T X / n_samples`` as the reference's ``add_batch`` builds it (it counts sequences, not
    tokens; the count matters where an input is dead on every token: its diagonal is set to 1 and
    the 1 % dampening is relative to the live ones). Wanda: the squared L2 norm of every input
    feature over all calibration tokens.
    """

    def __init__(self, kind: str) -> None:
        if kind not in ("norms", "hessian"):
            raise ValueError(f"stats kind must be 'norms' or 'hessian', got {kind!r}")
        self.kind = kind
        self.samples = 0
        self.total: torch.Tensor | None = None

    def add(self, X: torch.Tensor, samples: int) -> None:
        """Add the rows ``X`` ``[tokens, features]`` of ``samples`` calibration samples."""
        part = square_sums(X) if self.kind == "norms" else gram(X)
        self.total = part if self.total is None else self.total + part
        self.samples += int(samples)

    def accumulated(self) -> torch.Tensor:
        """``total``, once at least one input was added."""
        if self.total is None:
            raise ValueError("no inputs were added: the layer was never called")
        return self.total

    def hessian(self) -> torch.Tensor:
        return (2.0 / max(self.samples, 1)) * self.accumulated()
