"""Sparse training from scratch on the digits models: dense, STE, SR-STE, gradual pruning, random mask.

- **STE**: every forward uses ``W̃ = E ⊙ W`` where the N:M keep-mask ``E`` is recomputed from the
  current dense ``|W|`` at every step (the contract's ``nm_mask``/``conv_nm_mask``); the backward
  passes the gradient of ``W̃`` straight to the dense ``W``.
- **SR-STE** (Zhou et al., 2021): the same, plus ``λ_w (1 − E) ⊙ W`` added to the gradient, so pruned
  weights get an extra decay (λ_w = 2e-4 in the official code).
- **gradual**: magnitude pruning to an unstructured target with Zhu & Gupta's cubic schedule.
- **random**: a fixed, seeded random N:M mask (the random-pruning baseline).
- **dense**: no mask; the N:M masks magnitude pruning *would* pick are still recorded, so the dense
  run shows how much the top-N topology moves on its own.

A run is seeded and deterministic. ``train`` returns a ``RunRecord`` (metrics, bit-packed mask
snapshots, final weights); ``run_and_save`` also keeps it in the disk cache (one key per run plus an
index, each written atomically), so a stopped or crashed run leaves a readable partial entry.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .cache import get_cache, make_key
from .masks import conv_nm_mask, nm_mask, serial_kernels, unstructured_mask
from .models.digits import ARCHITECTURES, DigitsData, build_digits_model, digits_split
from .sparsify import prunable_layers
from .topology import MaskHistory, SadReport, sad_report

METHODS = ("dense", "ste", "srste", "gradual", "random")
METHOD_LABELS = {"dense": "dense", "ste": "STE", "srste": "SR-STE", "gradual": "gradual", "random": "random mask"}
NM_METHODS = ("dense", "ste", "srste", "random")
"""Methods whose masks are N:M (dense records the N:M masks it would get, without applying them)."""
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
CONV_GROUPINGS = ("channel", "kernel")
SNAPSHOT_UNITS = ("epoch", "step")
STATUSES = ("running", "complete", "stopped", "failed")

DEFAULT_LAMBDA_W = 2e-4
"""SR-STE's sparse-refined decay in the official code (``decay=0.0002``)."""
MAX_M = 32
MAX_EPOCHS = 200
MAX_STEPS = 20_000
"""Most optimiser steps in one run (epochs × steps per epoch): keeps a browser run bounded."""
MAX_SNAPSHOTS = 2_000
MAX_LR = 10.0
MAX_LAMBDA_W = 1.0
MAX_SPARSITY = 0.99
DIGITS_IMAGES = 1797
"""Images in scikit-learn's digits set; the default split holds out 20% of them for testing."""
DIGITS_TRAIN_SIZE = DIGITS_IMAGES - math.ceil(0.2 * DIGITS_IMAGES)
"""Training images of the default split (scikit-learn rounds the test share up): 1437."""
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Serialises to JSON (``to_json``/``from_json``) for cache entries and exports."""

    arch: str = "cnn"
    """Digits architecture trained from scratch: ``mlp``, ``cnn`` or ``vit``."""
    method: str = "srste"
    """``dense``, ``ste``, ``srste``, ``gradual`` (unstructured, cubic schedule) or ``random`` (fixed mask)."""
    n: int = 2
    """N:M methods: weights kept in each group of M (N counts kept weights)."""
    m: int = 4
    """N:M methods: group size, 2..32. Layers whose grouped dimension is not a multiple of M stay dense."""
    conv_grouping: str = "channel"
    """Conv N:M groups: ``channel`` (M input channels at one kernel position; NVIDIA ASP) or
    ``kernel`` (the flattened in*kh*kw axis; the original SR-STE code)."""
    lambda_w: float = DEFAULT_LAMBDA_W
    """SR-STE only: decay λ_w of the pruned weights, added to their gradient as λ_w·(1−E)⊙W; 0..1.
    (Being part of the gradient, it goes through momentum, and through Adam's normalisation with AdamW.)"""
    target_sparsity: float = 0.75
    """Gradual only: final pruned fraction s_f of every sparse layer, 0 < s_f <= 0.99."""
    initial_sparsity: float = 0.0
    """Gradual only: pruned fraction s_i applied at the first pruning step, 0 <= s_i < s_f."""
    prune_start: float = 0.1
    """Gradual only: first pruning step t_0, as a fraction of all training steps (rounded down)."""
    prune_end: float = 0.7
    """Gradual only: pruning ends by this fraction of all training steps (the rest fine-tunes)."""
    prune_every: int = 10
    """Gradual only: Δt, optimiser steps between two pruning steps."""
    optimizer: str = "sgd"
    """``sgd`` (with momentum, the SR-STE recipe) or ``adamw``."""
    lr: float = 0.1
    """Peak learning rate, 0 < lr <= 10."""
    momentum: float = 0.9
    """SGD momentum, 0 <= momentum < 1 (ignored by AdamW)."""
    weight_decay: float = 5e-4
    """Weight decay of every parameter (SGD: L2 added to the gradient; AdamW: decoupled), 0..1."""
    schedule: str = "cosine"
    """Learning-rate schedule over all steps: ``cosine`` (to zero, no warm-up) or ``constant``."""
    epochs: int = 20
    """Passes over the training split, 1..200."""
    batch_size: int = 64
    """Images per optimiser step, 1..1437 (the training split)."""
    seed: int = 0
    """Seed of the initial weights, the batch order and the random mask."""
    snapshot_unit: str = "epoch"
    """Mask snapshots are taken every ``snapshot_every`` ``epoch``s or ``step``s (and always at the
    start and at the end)."""
    snapshot_every: int = 1
    """Interval between two mask snapshots, in ``snapshot_unit``."""

    def validate(self, n_train: int = DIGITS_TRAIN_SIZE) -> None:
        """Raise ``ValueError`` with a clear message for any setting out of bounds.

        Args:
            n_train: training images the run will see (the default split's 1437).
        """
        choices = {"arch": ARCHITECTURES, "method": METHODS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
                   "conv_grouping": CONV_GROUPINGS, "snapshot_unit": SNAPSHOT_UNITS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("n", "m", "prune_every", "epochs", "batch_size", "seed", "snapshot_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in ("lambda_w", "target_sparsity", "initial_sparsity", "prune_start", "prune_end", "lr",
                     "momentum", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 2 <= self.m <= MAX_M:
            raise ValueError(f"M must be between 2 and {MAX_M}, got M={self.m}")
        if not 1 <= self.n < self.m:
            raise ValueError(f"N:M needs 1 <= N < M (keep N of every M), got N={self.n}, M={self.m}")
        if not 0.0 <= self.lambda_w <= MAX_LAMBDA_W:
            raise ValueError(f"λ_w (SR-STE decay) must be between 0 and {MAX_LAMBDA_W}, got {self.lambda_w:g}")
        if not 0.0 < self.lr <= MAX_LR:
            raise ValueError(f"learning rate must be > 0 and at most {MAX_LR:g}, got {self.lr:g}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must satisfy 0 <= momentum < 1, got {self.momentum:g}")
        if not 0.0 <= self.weight_decay <= 1.0:
            raise ValueError(f"weight decay must be between 0 and 1, got {self.weight_decay:g}")
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise ValueError(f"epochs must be between 1 and {MAX_EPOCHS}, got {self.epochs}")
        if not 1 <= self.batch_size <= n_train:
            raise ValueError(f"batch size must be between 1 and {n_train} (the training images), got {self.batch_size}")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")
        if self.snapshot_every < 1:
            raise ValueError(f"snapshot interval must be at least 1 {self.snapshot_unit}, got {self.snapshot_every}")
        spe = self.steps_per_epoch(n_train)
        total = self.epochs * spe
        if total > MAX_STEPS:
            raise ValueError(f"{self.epochs} epochs × {spe} steps per epoch = {total:,} optimiser steps, over the "
                             f"limit of {MAX_STEPS:,}; use fewer epochs or a larger batch")
        per = spe if self.snapshot_unit == "epoch" else 1
        snapshots = total // (per * self.snapshot_every) + 2
        if snapshots > MAX_SNAPSHOTS:
            raise ValueError(f"a snapshot every {self.snapshot_every} {self.snapshot_unit}(s) gives {snapshots:,} "
                             f"mask snapshots, over the limit of {MAX_SNAPSHOTS:,}; snapshot less often")
        if self.method == "gradual":
            if not 0.0 < self.target_sparsity <= MAX_SPARSITY:
                raise ValueError(f"target sparsity must be > 0 and at most {MAX_SPARSITY}, got {self.target_sparsity:g}")
            if not 0.0 <= self.initial_sparsity < self.target_sparsity:
                raise ValueError(f"initial sparsity must satisfy 0 <= s_i < target ({self.target_sparsity:g}), "
                                 f"got {self.initial_sparsity:g}")
            if not 0.0 <= self.prune_start < self.prune_end <= 1.0:
                raise ValueError(f"pruning window must satisfy 0 <= start < end <= 1 (fractions of training), "
                                 f"got start={self.prune_start:g}, end={self.prune_end:g}")
            if self.prune_every < 1:
                raise ValueError(f"prune_every (Δt) must be at least 1 step, got {self.prune_every}")
            t0, t_end = self._window(total)
            if t_end - t0 < self.prune_every:
                raise ValueError(f"the pruning window ({t_end - t0} steps, from step {t0} to {t_end}) is shorter than "
                                 f"Δt = {self.prune_every} steps; widen the window or prune more often")

    def steps_per_epoch(self, n_train: int = DIGITS_TRAIN_SIZE) -> int:
        """Optimiser steps in one pass (the last batch may be smaller)."""
        return math.ceil(n_train / self.batch_size) if self.batch_size >= 1 else 0

    def _window(self, total_steps: int) -> tuple[int, int]:
        return int(math.floor(self.prune_start * total_steps)), int(math.floor(self.prune_end * total_steps))

    def gradual_schedule(self, total_steps: int) -> tuple[int, int, int]:
        """Zhu & Gupta's ``(t_0, n, Δt)`` for a run of ``total_steps``: prune at ``t_0 + kΔt``, k = 0..n."""
        t0, t_end = self._window(total_steps)
        return t0, max(1, (t_end - t0) // self.prune_every), self.prune_every

    @property
    def uses_nm(self) -> bool:
        """Whether the run's masks are N:M (all methods but gradual)."""
        return self.method in NM_METHODS

    def label(self) -> str:
        """Short human label, e.g. ``SR-STE 2:4 λ=0.0002`` or ``gradual to 75%``."""
        if self.method == "gradual":
            head = f"gradual to {self.target_sparsity:.0%}"
        elif self.method == "dense":
            head = "dense"
        else:
            head = f"{METHOD_LABELS[self.method]} {self.n}:{self.m}"
        if self.method == "srste":
            head += f" λ={self.lambda_w:g}"
        return f"{head} · {self.arch.upper()}"

    def to_json(self) -> str:
        """The config as sorted JSON."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> "TrainConfig":
        """Inverse of ``to_json`` (also takes the parsed dict); unknown fields raise ``ValueError``."""
        data = json.loads(text) if isinstance(text, str) else dict(text)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**data)


def zhu_gupta_sparsity(t: int, *, initial: float, final: float, start: int, n: int, every: int) -> float:
    """Zhu & Gupta's cubic schedule: ``s_t = s_f + (s_i − s_f)(1 − (t − t_0)/(nΔt))³``.

    Args:
        t: optimiser step.
        initial: s_i, the sparsity at ``t_0``.
        final: s_f, reached at ``t_0 + nΔt`` and kept afterwards.
        start: t_0.
        n: number of pruning intervals.
        every: Δt.

    Returns:
        The target sparsity at ``t``; 0 (dense) before ``t_0``.
    """
    if t < start:
        return 0.0
    progress = min(1.0, (t - start) / (n * every))
    return final + (initial - final) * (1.0 - progress) ** 3


@dataclass(frozen=True)
class EpochMetrics:
    """Quality after an epoch (or at the point a run stopped)."""

    epoch: float
    """Epochs done (fractional when a run stopped mid-epoch)."""
    step: int
    """Optimiser steps done."""
    train_loss: float
    """Mean cross-entropy of the epoch's batches (each measured before its update)."""
    train_accuracy: float
    """Percent of the epoch's training images classified right, as the batches went by."""
    test_loss: float
    """Cross-entropy on the held-out split, with the sparse forward weights."""
    test_accuracy: float
    """Held-out accuracy in percent, with the sparse forward weights."""
    lr: float
    """Learning rate of the epoch's last step."""
    density: float
    """Kept fraction of the sparse layers' weights (1.0 when nothing is masked)."""
    seconds: float
    """Wall time since the start of the run."""


@dataclass
class RunRecord:
    """Everything a training run produced; restores exactly from the cache (``load_run``).

    Attributes:
        config: the settings.
        name: a user-chosen name (defaults to the config's label).
        run_id: the cache id (empty until saved).
        status: ``running``, ``complete``, ``stopped`` or ``failed``.
        message: why a run stopped or failed.
        created: Unix time the run started.
        seconds: wall time of the training so far.
        steps_per_epoch: optimiser steps in one epoch.
        steps_done: optimiser steps done.
        epochs: one ``EpochMetrics`` per finished epoch (plus one at a mid-epoch stop).
        step_loss: the training loss of every step.
        history: mask snapshots of the sparse layers.
        dense_layers: Linear/Conv layers left dense, with the reason.
        prune_steps: gradual only: the steps at which masks were updated.
        weights: the final forward weights (masks applied) as a state dict of the plain architecture.
        owner: the process training the run (see ``owner_alive``).
    """

    config: TrainConfig
    name: str = ""
    run_id: str = ""
    status: str = "running"
    message: str = ""
    created: float = 0.0
    seconds: float = 0.0
    steps_per_epoch: int = 0
    steps_done: int = 0
    epochs: list[EpochMetrics] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    history: MaskHistory = field(default_factory=lambda: MaskHistory({}))
    dense_layers: dict[str, str] = field(default_factory=dict)
    prune_steps: list[int] = field(default_factory=list)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    owner: str = ""
    """The training process (host:pid:start time) while the run is ``running``: a run whose process
    has ended without saving a final status (server killed, crash) is then shown as stopped."""

    @property
    def total_steps(self) -> int:
        """Planned optimiser steps."""
        return self.config.epochs * self.steps_per_epoch

    @property
    def label(self) -> str:
        """The name, or the config's label."""
        return self.name or self.config.label()

    @property
    def final_accuracy(self) -> float | None:
        """Held-out accuracy (%) at the last evaluation, None before the first."""
        return self.epochs[-1].test_accuracy if self.epochs else None

    def sad(self) -> SadReport:
        """SAD series of the recorded mask snapshots."""
        return sad_report(self.history)

    def model(self) -> nn.Module:
        """A fresh module of the architecture holding the final forward weights (eval mode)."""
        if not self.weights:
            raise ValueError(f"run {self.label!r} has no saved weights (status {self.status})")
        module = build_digits_model(self.config.arch)
        module.load_state_dict(self.weights, strict=True)
        return module.eval()

    def summary(self) -> dict[str, Any]:
        """The small JSON-able description kept in the run index."""
        return {
            "run_id": self.run_id, "name": self.name, "label": self.label, "status": self.status,
            "message": self.message, "created": self.created, "seconds": self.seconds,
            "config": asdict(self.config), "epochs_done": self.epochs[-1].epoch if self.epochs else 0.0,
            "final_accuracy": self.final_accuracy, "snapshots": len(self.history), "owner": self.owner,
        }

    def to_dict(self, *, include_masks: bool = False) -> dict[str, Any]:
        """JSON-able dict: config, metrics, SAD series and layers (no weights).

        Args:
            include_masks: also add every snapshot's bit-packed mask as hex text.
        """
        report = self.sad()
        out = {
            **self.summary(),
            "format": "sparsekit-training-run",
            "version": FORMAT_VERSION,
            "steps_per_epoch": self.steps_per_epoch,
            "steps_done": self.steps_done,
            "epochs": [asdict(e) for e in self.epochs],
            "step_loss": list(self.step_loss),
            "sparse_layers": {k: list(v) for k, v in self.history.shapes.items()},
            "dense_layers": dict(self.dense_layers),
            "prune_steps": list(self.prune_steps),
            "snapshot_steps": list(self.history.steps),
            "snapshot_epochs": list(self.history.epochs),
            "sad": {kind: {"total": report.series(kind).astype(int).tolist(),
                           **{name: report.series(kind, name).astype(int).tolist() for name in report.layers}}
                    for kind in ("interval", "from_first", "to_final")},
        }
        if include_masks:
            out["masks_hex"] = {name: [b.hex() for b in blobs] for name, blobs in self.history.packed.items()}
        return _finite_json(out)


def _finite_json(obj: Any) -> Any:
    # NaN/inf are not JSON: a diverged loss is exported as null.
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_json(v) for v in obj]
    return obj


@dataclass(frozen=True)
class TrainProgress:
    """What the step callback sees."""

    event: str
    """``start`` before the first step, ``step`` after every optimiser step, ``epoch`` after every evaluation."""
    step: int
    """Optimiser steps done."""
    total_steps: int
    """Planned optimiser steps."""
    epoch: float
    """Epochs done."""
    loss: float
    """Training loss of the latest step."""
    metrics: EpochMetrics | None
    """The new evaluation (``epoch`` events), else None."""
    record: RunRecord
    """The run so far (live object: read it, do not keep it across steps)."""
    model: nn.Module
    """The model being trained, masks attached as parametrizations (live: read it, never change it);
    a sparse layer's dense weight is ``layer.parametrizations.weight.original``."""


StepCallback = Callable[[TrainProgress], "bool | None"]
"""Called at the start, after every step and after every epoch; return True to stop the run there
(status ``stopped``)."""


# ---------------------------------------------------------------------------------------------
# Masked forward weights


class _StraightThrough(torch.autograd.Function):
    # Forward E⊙W; backward passes the gradient straight to the dense W, plus SR-STE's
    # λ_w(1−E)⊙W on the pruned weights when decay > 0.

    @staticmethod
    def forward(ctx, weight, mask, decay):
        ctx.decay = decay
        if decay:
            ctx.save_for_backward(weight, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        if ctx.decay:
            weight, mask = ctx.saved_tensors
            return grad + ctx.decay * weight * (~mask), None, None
        return grad, None, None


def sparse_forward_weight(weight: torch.Tensor, mask: torch.Tensor, lambda_w: float = 0.0) -> torch.Tensor:
    """STE / SR-STE forward weight ``E ⊙ W`` with the straight-through backward.

    Args:
        weight: the dense weight W (requires grad).
        mask: bool keep-mask E of the same shape.
        lambda_w: 0 for STE; SR-STE's λ_w adds ``λ_w (1 − E) ⊙ W`` to W's gradient.

    Returns:
        ``W * E``; its gradient reaches W unmasked.
    """
    if mask.dtype != torch.bool or mask.shape != weight.shape:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(weight.shape)}")
    return _StraightThrough.apply(weight, mask, float(lambda_w))


class _NMStraightThrough(nn.Module):
    """Parametrization: recompute the N:M mask from |W| on every access (every forward)."""

    def __init__(self, mask_fn: Callable[[torch.Tensor], torch.Tensor], decay: float) -> None:
        super().__init__()
        self.mask_fn = mask_fn
        self.decay = decay

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(weight, self.mask_fn(weight.detach()), self.decay)


class _FixedMask(nn.Module):
    """Parametrization: a mask held in a buffer; pruned weights get no gradient."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def _nm_mask_fn(module: nn.Module, config: TrainConfig) -> Callable[..., torch.Tensor]:
    n, m = config.n, config.m
    if isinstance(module, nn.Linear):
        return lambda w, scores=None: nm_mask(w, n, m, scores=scores)
    return lambda w, scores=None: conv_nm_mask(w, n, m, grouping=config.conv_grouping, scores=scores)


def layer_plan(module: nn.Module, config: TrainConfig) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Which Linear/Conv layers a run makes sparse.

    Args:
        module: a digits model.
        config: the run's settings.

    Returns:
        ``(sparse, dense)``: name -> layer for the sparse ones, name -> reason for those left dense
        (an N:M grouped dimension that is not a multiple of M).
    """
    sparse: dict[str, nn.Module] = {}
    dense: dict[str, str] = {}
    for name, layer in prunable_layers(module):
        if not config.uses_nm:
            sparse[name] = layer
            continue
        w = layer.weight
        if isinstance(layer, nn.Linear):
            size, what = w.shape[1], "input features"
        elif config.conv_grouping == "channel":
            size, what = w.shape[1], "input channels"
        else:
            size, what = w[0].numel(), "in·kh·kw entries"
        if size % config.m:
            dense[name] = f"{size} {what}, not a multiple of M={config.m}"
        else:
            sparse[name] = layer
    return sparse, dense


# ---------------------------------------------------------------------------------------------
# Training


class _Run:
    """The model with its masks attached, and the mask bookkeeping for one method."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.model = build_digits_model(config.arch)
        self.sparse, self.dense = layer_plan(self.model, config)
        self.mask_fns = {name: _nm_mask_fn(layer, config) for name, layer in self.sparse.items()}
        method = config.method
        if method in ("ste", "srste"):
            decay = config.lambda_w if method == "srste" else 0.0
            for name, layer in self.sparse.items():
                parametrize.register_parametrization(layer, "weight", _NMStraightThrough(self.mask_fns[name], decay),
                                                     unsafe=True)
        elif method == "random":
            gen = torch.Generator().manual_seed(config.seed + 1)
            for name, layer in self.sparse.items():
                scores = torch.rand(layer.weight.shape, generator=gen)
                mask = self.mask_fns[name](layer.weight.detach(), scores)
                parametrize.register_parametrization(layer, "weight", _FixedMask(mask), unsafe=True)
        elif method == "gradual":
            for layer in self.sparse.values():
                ones = torch.ones(layer.weight.shape, dtype=torch.bool)
                parametrize.register_parametrization(layer, "weight", _FixedMask(ones), unsafe=True)

    def dense_weight(self, name: str) -> torch.Tensor:
        layer = self.sparse[name]
        if parametrize.is_parametrized(layer, "weight"):
            return layer.parametrizations.weight.original
        return layer.weight

    def masks(self) -> dict[str, torch.Tensor]:
        """The masks the next forward uses (dense: the N:M masks it would get)."""
        out = {}
        for name, layer in self.sparse.items():
            if self.config.method in ("random", "gradual"):
                out[name] = layer.parametrizations.weight[0].mask.clone()
            else:
                out[name] = self.mask_fns[name](self.dense_weight(name).detach())
        return out

    def density(self, masks: Mapping[str, torch.Tensor]) -> float:
        if self.config.method == "dense" or not masks:
            return 1.0
        return sum(int(mk.sum()) for mk in masks.values()) / sum(mk.numel() for mk in masks.values())

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Gradual: prune every sparse layer to ``sparsity``; once pruned, a weight stays pruned."""
        for name in self.sparse:
            holder = self.sparse[name].parametrizations.weight[0]
            w = self.dense_weight(name)
            # Scores zero at already-pruned weights keep the masks nested as sparsity grows.
            keep = unstructured_mask(w, sparsity, scores=w.abs() * holder.mask)
            holder.mask.copy_(keep)
            w.mul_(keep)

    @torch.no_grad()
    def forward_state(self) -> dict[str, torch.Tensor]:
        """State dict of the plain architecture with the forward (masked) weights."""
        out = {}
        for key in build_digits_model(self.config.arch).state_dict():
            obj: Any = self.model
            *path, attr = key.split(".")
            for part in path:
                obj = getattr(obj, part)
            out[key] = getattr(obj, attr).detach().clone().contiguous()
        return out


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = float(F.cross_entropy(logits, y))
        acc = 100.0 * int((logits.argmax(-1) == y).sum()) / max(int(y.numel()), 1)
    model.train()
    return loss, acc


def train(
    config: TrainConfig,
    *,
    name: str = "",
    data: DigitsData | None = None,
    callback: StepCallback | None = None,
    checkpoint: Callable[[RunRecord], None] | None = None,
) -> RunRecord:
    """Train a digits model from scratch with one sparse-training method.

    Args:
        config: the settings (validated here).
        name: a label for the run (default: the config's label).
        data: the digits split (default ``digits_split()``).
        callback: ``callback(TrainProgress)`` after every step and every epoch; return True to stop.
        checkpoint: ``checkpoint(record)`` at the start, after every epoch and at the end, including
            when the run stops or raises (then before the exception propagates).

    Returns:
        The ``RunRecord``; ``status`` is ``complete``, ``stopped`` (callback asked), or ``failed``
        (the loss became NaN/inf; ``message`` says when).
    """
    data = data if data is not None else digits_split()
    n_train = int(data.x_train.shape[0])
    config.validate(n_train)
    # A forked RNG: seeding must not reset the caller's global random state.
    # The per-step masks of these small layers take microseconds; a parallel numba launch costs more
    # than the work, and on a busy machine each parallel region can wait milliseconds for a second
    # core (measured: 13 ms instead of 75 µs per step on this shared 2-core box).
    with torch.random.fork_rng(devices=[]), serial_kernels():
        torch.manual_seed(config.seed)
        return _train(config, name, data, callback, checkpoint)


def _train(config: TrainConfig, name: str, data: DigitsData, callback: StepCallback | None,
           checkpoint: Callable[[RunRecord], None] | None) -> RunRecord:
    start_time = time.perf_counter()
    run = _Run(config)
    model = run.model
    n_train = int(data.x_train.shape[0])
    spe = config.steps_per_epoch(n_train)
    total = config.epochs * spe
    record = RunRecord(config=config, name=name, created=time.time(), steps_per_epoch=spe,
                       history=MaskHistory({k: tuple(v.weight.shape) for k, v in run.sparse.items()}),
                       dense_layers=dict(run.dense), owner=process_token())
    prune_steps: set[int] = set()
    if config.method == "gradual":
        t0, n_int, dt = config.gradual_schedule(total)
        prune_steps = {t0 + k * dt for k in range(n_int + 1)}
        record.prune_steps = sorted(prune_steps)

        def prune(step: int) -> None:
            run.prune_to(zhu_gupta_sparsity(step, initial=config.initial_sparsity, final=config.target_sparsity,
                                            start=t0, n=n_int, every=dt))

    params = list(model.parameters())
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                                     weight_decay=config.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    gen = torch.Generator().manual_seed(config.seed)
    snap_period = (spe if config.snapshot_unit == "epoch" else 1) * config.snapshot_every

    def snapshot(step: int) -> None:
        if not record.history.steps or record.history.steps[-1] != step:
            record.history.record(step, step / spe, run.masks())

    def finish(status: str, message: str = "", *, salvage: bool = False) -> RunRecord:
        record.status, record.message = status, message
        if salvage:
            # After a failure the weights may hold NaN, which no mask can rank: save what is readable.
            try:
                snapshot(step)
                record.weights = run.forward_state()
            except Exception:
                record.weights = {}
        else:
            record.weights = run.forward_state()
        record.seconds = time.perf_counter() - start_time
        if checkpoint is not None:
            checkpoint(record)
        return record

    step = 0
    loss_value = step_lr = float("nan")
    try:
        if 0 in prune_steps:
            prune(0)
        snapshot(0)
        if checkpoint is not None:
            checkpoint(record)
        model.train()
        if callback is not None and callback(TrainProgress("start", 0, total, 0.0, loss_value, None, record, model)):
            return finish("stopped", f"stopped at step 0 of {total}")
        stop = False
        for epoch in range(config.epochs):
            order = torch.randperm(n_train, generator=gen)
            epoch_loss, epoch_correct, epoch_seen = 0.0, 0, 0
            for lo in range(0, n_train, config.batch_size):
                idx = order[lo: lo + config.batch_size]
                xb, yb = data.x_train[idx], data.y_train[idx]
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    record.step_loss.append(loss_value)
                    return finish("failed", f"the training loss became {loss_value} at step {step + 1}; "
                                            f"lower the learning rate (now {config.lr:g})", salvage=True)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                step_lr = opt.param_groups[0]["lr"]
                opt.step()
                sched.step()
                step += 1
                record.steps_done = step
                record.step_loss.append(loss_value)
                epoch_loss += loss_value * len(idx)
                epoch_correct += int((logits.detach().argmax(-1) == yb).sum())
                epoch_seen += len(idx)
                if step in prune_steps:
                    prune(step)
                if step % snap_period == 0:
                    snapshot(step)
                if callback is not None and callback(TrainProgress("step", step, total, step / spe, loss_value,
                                                                   None, record, model)):
                    stop = True
                    break
            metrics = _epoch_metrics(run, data, step, spe, epoch_loss, epoch_correct, epoch_seen,
                                     step_lr, start_time)
            record.epochs.append(metrics)
            record.seconds = metrics.seconds
            if stop:
                snapshot(step)
                return finish("stopped", f"stopped at step {step} of {total}")
            if callback is not None and callback(TrainProgress("epoch", step, total, step / spe, loss_value,
                                                               metrics, record, model)):
                snapshot(step)
                return finish("stopped", f"stopped at step {step} of {total}")
            if checkpoint is not None and epoch + 1 < config.epochs:
                checkpoint(record)
        snapshot(step)
        return finish("complete")
    except Exception as err:
        if record.status == "running":
            finish("failed", f"{type(err).__name__} at step {step}: {err}", salvage=True)
        raise
    except BaseException:
        # KeyboardInterrupt, or Streamlit interrupting the script for a rerun (the Stop button).
        if record.status == "running":
            finish("stopped", f"interrupted at step {step} of {total}", salvage=True)
        raise


def _epoch_metrics(run: _Run, data: DigitsData, step: int, spe: int, loss_sum: float, correct: int, seen: int,
                   lr: float, start_time: float) -> EpochMetrics:
    test_loss, test_acc = _evaluate(run.model, data.x_test, data.y_test)
    return EpochMetrics(
        epoch=step / spe, step=step,
        train_loss=loss_sum / seen if seen else float("nan"),
        train_accuracy=100.0 * correct / seen if seen else float("nan"),
        test_loss=test_loss, test_accuracy=test_acc, lr=float(lr),
        density=run.density(run.masks()) if run.sparse else 1.0,
        seconds=time.perf_counter() - start_time,
    )


# ---------------------------------------------------------------------------------------------
# Serialisation


def run_to_bytes(record: RunRecord) -> bytes:
    """A run as safetensors bytes: final weights and packed mask snapshots as tensors, the rest as
    JSON metadata (no pickle anywhere).

    Args:
        record: the run.

    Returns:
        The bytes ``run_from_bytes`` reads back.
    """
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {f"weight/{k}": v.contiguous() for k, v in record.weights.items()}
    for layer, blobs in record.history.packed.items():
        width = (record.history.numel(layer) + 7) // 8
        arr = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), width)
        tensors[f"masks/{layer}"] = torch.from_numpy(arr.copy())
    meta = {
        "config": asdict(record.config), "name": record.name, "run_id": record.run_id, "status": record.status,
        "message": record.message, "created": record.created, "seconds": record.seconds,
        "steps_per_epoch": record.steps_per_epoch, "steps_done": record.steps_done,
        "epochs": [asdict(e) for e in record.epochs], "step_loss": record.step_loss,
        "shapes": {k: list(v) for k, v in record.history.shapes.items()},
        "snapshot_steps": record.history.steps, "snapshot_epochs": record.history.epochs,
        "dense_layers": record.dense_layers, "prune_steps": record.prune_steps, "owner": record.owner,
    }
    # Python's json writes NaN/Infinity literals and reads them back, so a diverged loss survives exactly.
    return save(tensors, metadata={"format": "sparsekit-training-run", "version": str(FORMAT_VERSION),
                                   "record": json.dumps(meta)})


def run_from_bytes(blob: bytes) -> RunRecord:
    """Inverse of ``run_to_bytes``.

    Args:
        blob: bytes written by ``run_to_bytes``.

    Returns:
        The run, equal to the one saved.

    Raises:
        ValueError: not a training-run entry, or a newer format.
    """
    from safetensors.torch import load

    from .models.weights import safetensors_header

    meta = safetensors_header(blob).get("__metadata__") or {}
    if meta.get("format") != "sparsekit-training-run":
        raise ValueError("not a sparsekit training-run entry")
    if int(meta.get("version", "0")) > FORMAT_VERSION:
        raise ValueError(f"training-run format {meta.get('version')} is newer than this sparsekit ({FORMAT_VERSION})")
    info = json.loads(meta["record"])
    tensors = load(blob)
    history = MaskHistory({k: tuple(v) for k, v in info["shapes"].items()},
                          steps=list(info["snapshot_steps"]), epochs=list(info["snapshot_epochs"]))
    for layer in history.shapes:
        arr = tensors[f"masks/{layer}"].numpy()
        history.packed[layer] = [row.tobytes() for row in arr]
    return RunRecord(
        config=TrainConfig.from_json(info["config"]), name=info["name"], run_id=info["run_id"],
        status=info["status"], message=info["message"], created=info["created"], seconds=info["seconds"],
        steps_per_epoch=info["steps_per_epoch"], steps_done=info["steps_done"],
        epochs=[EpochMetrics(**e) for e in info["epochs"]], step_loss=list(info["step_loss"]),
        history=history, dense_layers=dict(info["dense_layers"]), prune_steps=list(info["prune_steps"]),
        weights={k[len("weight/"):]: v for k, v in tensors.items() if k.startswith("weight/")},
        owner=str(info.get("owner", "")),
    )


def metrics_csv(records: list[RunRecord]) -> str:
    """Per-epoch metrics of several runs, one row per (run, epoch), with the SAD of the snapshot
    taken at that epoch's step where there is one.

    Args:
        records: the runs.

    Returns:
        CSV text.
    """
    buf = io.StringIO()
    cols = ["run_id", "name", "method", "n", "m", "arch", *[f.name for f in fields(EpochMetrics)],
            "sad_interval", "sad_interval_fraction", "sad_from_first", "sad_to_final"]
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    for rec in records:
        rep = rec.sad()
        at_step = {s: i for i, s in enumerate(rep.steps)}
        for e in rec.epochs:
            row = {"run_id": rec.run_id, "name": rec.label, "method": rec.config.method, "n": rec.config.n,
                   "m": rec.config.m, "arch": rec.config.arch, **asdict(e)}
            i = at_step.get(e.step)
            if i is not None and rep.layers:
                row.update(sad_interval=int(rep.series("interval")[i]),
                           sad_interval_fraction=float(rep.series("interval", fraction=True)[i]),
                           sad_from_first=int(rep.series("from_first")[i]),
                           sad_to_final=int(rep.series("to_final")[i]))
            writer.writerow(row)
    return buf.getvalue()


def sad_csv(records: list[RunRecord]) -> str:
    """SAD per snapshot and layer (plus totals) of several runs, as CSV text."""
    buf = io.StringIO()
    writer = None
    for rec in records:
        for row in rec.sad().rows():
            row = {"run_id": rec.run_id, "name": rec.label, **row}
            if writer is None:
                writer = csv.DictWriter(buf, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
    return buf.getvalue()


def runs_json(records: list[RunRecord], *, include_masks: bool = False) -> str:
    """Several runs as one JSON document (``RunRecord.to_dict`` each, no weights)."""
    return json.dumps({"runs": [r.to_dict(include_masks=include_masks) for r in records]}, indent=1)


# ---------------------------------------------------------------------------------------------
# The disk cache: one key per run, plus an index of summaries


def _process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (clock ticks since boot), '' when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after "(comm)"
    except (OSError, IndexError):
        return ""


def process_token(pid: int | None = None) -> str:
    """``host:pid:start`` of a process (default: this one); the start time guards against pid reuse."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def owner_alive(token: str) -> bool | None:
    """Whether the process named by ``process_token`` still runs: True/False, or None when this
    machine cannot tell (another host shares the cache, or the token is malformed)."""
    try:
        host, pid_text, start = token.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname() or pid <= 0:
        return None
    if start:
        return _process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _orphan_message(steps_note: str) -> str:
    return ("the process training this run ended without saving a final status (server stopped or crashed); "
            f"kept as of its last checkpoint{steps_note}")


def _orphaned(status: str, owner: str) -> bool:
    """A run still marked running whose training process is known to have ended."""
    return status == "running" and bool(owner) and owner_alive(owner) is False


def _settle_orphan_entry(entry: dict) -> dict:
    if _orphaned(entry.get("status", ""), entry.get("owner", "")):
        done = entry.get("epochs_done") or 0.0
        return {**entry, "status": "stopped", "message": _orphan_message(f" (epoch {done:g})")}
    return entry


def _run_key(run_id: str) -> str:
    return make_key("training-run", run_id)


_INDEX_KEY = "training-run-index:v1"


def _read_index(cache) -> list[dict]:
    raw = cache.get(_INDEX_KEY)
    if raw is None:
        return []
    try:
        entries = json.loads(raw)
        if not isinstance(entries, list):
            raise ValueError
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("run_id"), str)]
    except (ValueError, TypeError):
        return _rebuild_index(cache)


def _rebuild_index(cache) -> list[dict]:
    # An unreadable index (never expected: writes are atomic) is rebuilt from the run entries.
    entries = []
    for key in list(cache.iterkeys()):
        if isinstance(key, str) and key.startswith("training-run:"):
            try:
                entries.append(run_from_bytes(cache.get(key)).summary())
            except Exception:
                continue
    entries.sort(key=lambda e: e.get("created", 0.0))
    cache.set(_INDEX_KEY, json.dumps(_finite_json(entries)))
    return entries


def save_run(record: RunRecord) -> str:
    """Write a run to the disk cache (its entry first, then the index), giving it an id if new.

    Args:
        record: the run; ``record.run_id`` is set when empty.

    Returns:
        The run id.
    """
    if not record.run_id:
        record.run_id = uuid.uuid4().hex[:12]
    cache = get_cache()
    cache.set(_run_key(record.run_id), run_to_bytes(record))
    summary = _finite_json(record.summary())
    with cache.transact():
        entries = _read_index(cache)
        pos = next((i for i, e in enumerate(entries) if e["run_id"] == record.run_id), None)
        if pos is None:
            entries.append(summary)
        else:
            entries[pos] = summary  # a checkpoint or a rename keeps the run's place in the list
        cache.set(_INDEX_KEY, json.dumps(entries))
    return record.run_id


def load_run(run_id: str) -> RunRecord:
    """A saved run, exactly as saved.

    Args:
        run_id: the id ``save_run`` returned.

    Returns:
        The ``RunRecord``.

    Raises:
        KeyError: no such run. ValueError: the entry is not readable.
    """
    blob = get_cache().get(_run_key(run_id))
    if blob is None:
        raise KeyError(f"no saved training run with id {run_id!r}")
    if not isinstance(blob, bytes):
        raise ValueError(f"the cache entry of run {run_id!r} is not a training run")
    try:
        record = run_from_bytes(blob)
    except ValueError:
        raise
    except Exception as err:  # safetensors raises its own error type for damaged bytes
        raise ValueError(f"the cache entry of run {run_id!r} is damaged: {err}") from None
    if _orphaned(record.status, record.owner):
        record.status = "stopped"
        record.message = _orphan_message(f" (step {record.steps_done:,} of {record.total_steps:,})")
    return record


def list_runs() -> list[dict]:
    """Summaries of the saved runs, oldest first (``RunRecord.summary`` dicts).

    Returns:
        One dict per run whose entry still exists.
    """
    cache = get_cache()
    return [_settle_orphan_entry(e) for e in _read_index(cache) if _run_key(e["run_id"]) in cache]


def rename_run(run_id: str, name: str) -> RunRecord:
    """Give a saved run a new name.

    Args:
        run_id: the run.
        name: the new name, at most 80 characters (empty: back to the config's label).

    Returns:
        The renamed run.
    """
    name = name.strip()
    if len(name) > 80:
        raise ValueError(f"a run name has at most 80 characters, got {len(name)}")
    record = load_run(run_id)
    record.name = name
    save_run(record)
    return record


def delete_run(run_id: str) -> None:
    """Remove a saved run (index first, so no listed run ever lacks its entry).

    Args:
        run_id: the run; an unknown id raises ``KeyError``.
    """
    cache = get_cache()
    with cache.transact():
        entries = _read_index(cache)
        if not any(e["run_id"] == run_id for e in entries) and _run_key(run_id) not in cache:
            raise KeyError(f"no saved training run with id {run_id!r}")
        cache.set(_INDEX_KEY, json.dumps([e for e in entries if e["run_id"] != run_id]))
    cache.delete(_run_key(run_id))


def run_and_save(
    config: TrainConfig,
    *,
    name: str = "",
    data: DigitsData | None = None,
    callback: StepCallback | None = None,
) -> RunRecord:
    """``train`` with the run kept in the disk cache from its first step: saved at the start, after
    every epoch, and at the end, also when it is stopped or raises (status ``stopped``/``failed``).

    Args:
        config: the settings (a ``ValueError`` for bad ones is raised before anything is saved).
        name: the run's name.
        data: the digits split (default ``digits_split()``).
        callback: as for ``train``.

    Returns:
        The saved ``RunRecord`` (with its ``run_id``).
    """
    data = data if data is not None else digits_split()
    config.validate(int(data.x_train.shape[0]))
    return train(config, name=name, data=data, callback=callback, checkpoint=save_run)


__all__ = [
    "DEFAULT_LAMBDA_W", "EpochMetrics", "METHODS", "RunRecord", "TrainConfig", "TrainProgress", "delete_run",
    "layer_plan", "list_runs", "load_run", "metrics_csv", "owner_alive", "process_token", "rename_run",
    "run_and_save", "run_from_bytes", "run_to_bytes", "runs_json", "sad_csv", "save_run", "sparse_forward_weight",
    "train", "zhu_gupta_sparsity",
]
