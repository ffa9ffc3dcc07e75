"""SparseGPT (Frantar & Alistarh, 2023): per layer, ``H = 2 X^T X / n`` (n = calibration samples, i.e.
sequences or images, as the reference counts them) dampened by ``0.01 * mean(diag H)``; the upper
Cholesky factor of ``H^-1`` drives a column-by-column pass in blocks of 128 that chooses the mask by
``w^2 / [H^-1]_ii^2`` and spreads each pruned weight's error over the columns not yet visited, so the
kept weights are rewritten. Runs in the shared calibration forward (``calibration.sequential_prune``)."""
from __future__ import annotations

from typing import Any

import torch

from ..masks import unstructured_mask
from .base import Method, MethodOutput, one_thread, register
from .calibration import InputStats, LayerInputs, check_calibration, sequential_prune

SPARSEGPT_BLOCK = 128
"""Columns per SparseGPT block (the paper's and reference code's value)."""
SPARSEGPT_DAMP = 0.01
"""SparseGPT dampening: ``lambda = 0.01 * mean(diag H)``."""


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    blocksize: int = SPARSEGPT_BLOCK,
    damp: float = SPARSEGPT_DAMP,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
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
    """
    if (sparsity is None) == (nm is None):
        raise ValueError("give exactly one of sparsity (unstructured) or nm=(n, m)")
    with one_thread():
        return _sparsegpt(weight, hessian, sparsity, nm, blocksize, damp)


def _sparsegpt(weight, hessian, sparsity, nm, blocksize, damp):
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian shape {tuple(hessian.shape)} does not match {cols} weight columns")
    if nm is not None:
        n, m = nm
        if cols % m:
            raise ValueError(f"{cols} columns are not a multiple of M={m}")
        blocksize = max(m, blocksize - blocksize % m)
    W = weight.detach().clone().float()
    H = hessian.detach().clone().double()
    # Inputs that are zero on every calibration token carry no information: the reference code
    # gives them a unit diagonal and zeroes their weights.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    base = damp * torch.mean(torch.diag(H)).item()
    used = base
    for attempt in range(6):
        try:
            Hd = H + used * torch.eye(cols, dtype=H.dtype)
            Hinv = torch.cholesky_inverse(torch.linalg.cholesky(Hd))
            U = torch.linalg.cholesky(Hinv, upper=True).float()
            break
        except RuntimeError:  # torch.linalg.LinAlgError: not positive definite; dampen more
            used = base * 10 ** (attempt + 1)
    else:
        raise ValueError("the calibration Hessian stayed singular even with 100000x dampening")

    keep = torch.ones(rows, cols, dtype=torch.bool)
    loss = 0.0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        inv_d = (1.0 / d).tolist()
        if sparsity is not None:
            keep1 = unstructured_mask(W1, float(sparsity), scores=W1**2 / d.unsqueeze(0) ** 2)
        else:
            keep1 = torch.ones_like(W1, dtype=torch.bool)
        pruned1 = (~keep1).to(W1.dtype)
        for i in range(count):
            if nm is not None and i % m == 0:
                # The group's mask is chosen only now, after the errors of the earlier columns
                # have been folded into it.
                # A stable sort keeps nm_mask's tie rule (lower index wins) without a kernel launch
                # per group of M columns.
                score = W1[:, i : i + m] ** 2 / d[i : i + m].unsqueeze(0) ** 2
                order = torch.sort(score, dim=1, descending=True, stable=True).indices
                group_keep = torch.zeros_like(score, dtype=torch.bool)
                keep1[:, i : i + m] = group_keep.scatter_(1, order[:, :n], True)
                pruned1[:, i : i + m] = (~keep1[:, i : i + m]).to(W1.dtype)
            # Column i is final once its own error is taken out: the kept weights stay, the pruned
            # ones go, and the error (w - q) / d is spread over the columns still to come.
            err = W1[:, i] * pruned1[:, i] * inv_d[i]
            if i + 1 < count:
                W1[:, i + 1 :].addr_(err, U1[i, i + 1 :], alpha=-1.0)
            Err1[:, i] = err
        loss += float((Err1**2).sum()) / 2
        W[:, i1:i2] = W1 * keep1
        keep[:, i1:i2] = keep1
        if i2 < cols:
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    W[~keep] = 0.0
    return W.to(weight.dtype), keep, {"damp": used, "damp_raised": used > base, "loss": loss}


def _keep(layer: LayerInputs, weight: torch.Tensor, config: Any, stats: InputStats, notes: dict[str, str]):
    W = layer.matrix(weight.detach())
    nm = (config.n, config.m) if config.pattern == "nm" else None
    new, keep, info = sparsegpt_prune(W, stats.hessian(), sparsity=None if nm else float(config.sparsity), nm=nm)
    if info["damp_raised"]:
        notes[layer.name] = f"Hessian not positive definite at 1% dampening; used {info['damp']:.3g}"
    return layer.from_matrix(keep), layer.from_matrix(new)


def run(model, names, config, calibration, progress) -> MethodOutput:
    check_calibration(calibration, "sparsegpt")
    return sequential_prune(model, names, config, calibration, progress, _keep, "hessian")


register(Method(
    name="sparsegpt", label="SparseGPT", needs_calibration=True, run=run, layer_local=True,
    calibration_order=True,
    help="Hessian-based (OBS) mask, and the kept weights rewritten to make up for the pruned ones"))
