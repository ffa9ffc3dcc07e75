"""Taylor (Molchanov et al., 2019): ``(g * w)^2`` summed over calibration mini-batches, with ``g`` the
gradient of a label-free calibration loss (``calibration.calibration_loss``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import Method, register
from .calibration import calibration_loss, calibration_size, calibration_slice, check_calibration
from .types import Calibration, MethodOutput, ProgressFn, PruneSettings

TAYLOR_BATCH = 16
"""Calibration samples per Taylor mini-batch (the squared importances are summed over them)."""


def taylor_scores(
    model: nn.Module,
    names: Sequence[str],
    calibration: Calibration,
    *,
    batch_size: int = TAYLOR_BATCH,
    progress: ProgressFn | None = None,
) -> MethodOutput:
    """First-order Taylor importance ``sum over mini-batches of (g * w)^2`` for each named layer.

    Args:
        model: the dense module (its parameters are not changed; gradients are not stored in ``.grad``).
        names: layers to score.
        calibration: calibration inputs, split into mini-batches of ``batch_size``.
        batch_size: samples per mini-batch.
        progress: optional ``progress(fraction, message)`` callback.

    Returns:
        A ``MethodOutput`` whose ``scores`` map each layer to a tensor of its weight's shape.
    """
    check_calibration(calibration, "taylor")
    modules = dict(model.named_modules())
    weights = [modules[n].weight for n in names]
    flags = [w.requires_grad for w in weights]
    scores = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in zip(names, weights)}
    notes: dict[str, str] = {}
    size = calibration_size(calibration)
    starts = list(range(0, size, batch_size))
    # The weights need gradients even when the caller runs under no_grad or inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        try:
            for w in weights:
                w.requires_grad_(True)
            for step, start in enumerate(starts):
                if progress is not None:
                    progress(0.9 * step / len(starts), f"taylor: gradients of batch {step + 1}/{len(starts)}")
                loss = calibration_loss(model, calibration_slice(calibration, start, start + batch_size))
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for name, w, g in zip(names, weights, grads):
                    if g is not None:
                        scores[name] += (g.detach() * w.detach()).float() ** 2
        finally:
            for w, flag in zip(weights, flags):
                w.requires_grad_(flag)
    for name, w in zip(names, weights):
        if not bool(scores[name].any()):
            notes[name] = "no gradient reached this layer: magnitude scores used"
            scores[name] = w.detach().abs().float()
    return MethodOutput(scores=scores, notes=notes)


def run(model: nn.Module, names: Sequence[str], config: PruneSettings, calibration: Calibration | None,
        progress: ProgressFn | None) -> MethodOutput:
    check_calibration(calibration, "taylor")
    assert calibration is not None
    return taylor_scores(model, names, calibration, progress=progress)


register(Method(
    name="taylor", label="Taylor", needs_calibration=True, run=run, run_output="scores", calibration_passes=3.0,
    help="(gradient·w)² of a label-free calibration loss, summed over mini-batches"))
