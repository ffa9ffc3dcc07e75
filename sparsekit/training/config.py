"""A training run's settings (``TrainConfig``), their bounds, and Zhu & Gupta's gradual schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from .. import serial
from ..models.digits import ARCH_LABELS, ARCHITECTURES

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


@dataclass(frozen=True)
class TrainConfig(serial.JsonConfig):
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
                raise ValueError(f"target sparsity must be > 0 and at most {MAX_SPARSITY}, "
                                 f"got {self.target_sparsity:g}")
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
        return f"{head} · {ARCH_LABELS.get(self.arch, self.arch)}"


ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {},
    "cnn": {},
    # Plain SGD at lr 0.1 leaves the ViT at chance (10 %, loss ln 10) however long it trains;
    # AdamW with a transformer's usual decay reaches about 96 % in 20 epochs (2:4 STE, measured).
    "vit": {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05},
}
"""Per architecture, the ``TrainConfig`` fields whose class default does not train it."""
ARCH_DEFAULT_FIELDS = ("optimizer", "lr", "weight_decay", "epochs")
"""The fields ``default_train_config`` may set per architecture (a form follows them on a model change)."""
EFFECT_LAMBDA_W = 2e-3
"""λ_w at which SR-STE's lower late SAD shows in a single pair of runs on the digits CNN."""


def default_train_config(arch: str = "cnn", **overrides: Any) -> TrainConfig:
    """Settings that train ``arch`` from scratch: the class defaults plus the architecture's own
    optimiser, learning rate and weight decay (``ARCH_DEFAULTS``).

    Args:
        arch: ``mlp``, ``cnn`` or ``vit``.
        **overrides: any other ``TrainConfig`` field (they win over the architecture's defaults).

    Returns:
        The config (not validated; ``validate`` it after overriding).

    Raises:
        ValueError: an unknown architecture.
    """
    if arch not in ARCH_DEFAULTS:
        raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}; got {arch!r}")
    return replace(TrainConfig(arch=arch), **{**ARCH_DEFAULTS[arch], **overrides})


def srste_effect_config(**overrides: Any) -> TrainConfig:
    """SR-STE settings under which its effect on the topology shows in one run: the CNN's defaults
    (SGD, lr 0.1, 20 epochs) at 2:4 with λ_w = 2e-3, ten times the paper's decay. At the paper's
    2e-4 the STE and SR-STE SAD curves of one seed overlap; a seed study is needed to tell them apart.

    Args:
        **overrides: any other ``TrainConfig`` field.

    Returns:
        The SR-STE config; ``replace(cfg, method="ste")`` is its STE partner.
    """
    return default_train_config("cnn", **{"method": "srste", "n": 2, "m": 4, "lambda_w": EFFECT_LAMBDA_W,
                                          "epochs": 20, **overrides})


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
