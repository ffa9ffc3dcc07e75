"""Plain reference implementations the tests check sparsekit against (no sparsekit code inside)."""
from __future__ import annotations

import torch


def obs_reference(w, h, *, nm=None, sparsity=None, block=128, damp=0.01):
    """SparseGPT written the textbook way, in float64: one column at a time, with the inverse
    Hessian kept explicitly and the processed column eliminated from it after each step (no
    Cholesky factor, no lazy block updates).

    An input dead on every calibration token gets a unit diagonal and a zero weight column; the
    dampening is then ``damp`` times the mean diagonal. A group's (N:M) or block's (unstructured)
    mask is chosen when its first column comes up, by w² / d², with d² the inverse-Hessian diagonal
    each column will have when it is processed (W plays no part in it); ties go to the lower index
    (N:M: within the group; unstructured: the flat index in the block).

    Returns:
        ``(weight, keep, loss)``: the updated float64 weight, the boolean keep mask, and the OBS
        loss, the sum over columns of ``|w - q|² / (2 d²)``.
    """
    rows, cols = w.shape
    H = h.double().clone()
    W = w.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(cols, dtype=torch.float64)
    hinv = torch.linalg.inv(H)
    # Pivots: the diagonal entry of each column at the moment it is eliminated.
    piv, tmp = torch.empty(cols, dtype=torch.float64), hinv.clone()
    for j in range(cols):
        piv[j] = tmp[j, j]
        tmp = tmp - torch.outer(tmp[:, j], tmp[j, :]) / tmp[j, j]
    keep = torch.ones(rows, cols, dtype=torch.bool)
    loss = 0.0
    for j in range(cols):
        if nm is not None and j % nm[1] == 0:
            n, m = nm
            scores = W[:, j : j + m] ** 2 / piv[j : j + m]
            order = torch.argsort(scores, dim=1, descending=True, stable=True)
            keep[:, j : j + m] = torch.zeros(rows, m, dtype=torch.bool).scatter_(1, order[:, :n], True)
        if sparsity is not None and j % block == 0:
            hi = min(j + block, cols)
            scores = (W[:, j:hi] ** 2 / piv[j:hi]).flatten()
            n_keep = scores.numel() - int(round(sparsity * scores.numel()))
            flat = torch.zeros(scores.numel(), dtype=torch.bool)
            flat[torch.argsort(scores, descending=True, stable=True)[:n_keep]] = True
            keep[:, j:hi] = flat.reshape(rows, hi - j)
        q = torch.where(keep[:, j], W[:, j], torch.zeros_like(W[:, j]))
        err = (W[:, j] - q) / hinv[j, j]
        loss += float(((W[:, j] - q) ** 2).sum() / hinv[j, j]) / 2
        W[:, j:] -= torch.outer(err, hinv[j, j:])
        W[:, j] = q
        hinv = hinv - torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return W, keep, loss
