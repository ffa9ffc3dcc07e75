"""A recovery run's settings (``RecoveryConfig``), their bounds, and the loss each model kind takes."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from .. import serial
from ..training.config import DEFAULT_LAMBDA_W

MODES = ("fixed", "ste", "srste")
MODE_LABELS = {"fixed": "fixed mask", "ste": "STE", "srste": "SR-STE"}
LOSSES = ("auto", "labels", "kl", "cosine", "mse", "cosine+mse")
LOSSES_BY_KIND: dict[str, tuple[str, ...]] = {
    "image-classifier": ("labels", "kl"),
    "encoder": ("cosine", "mse", "cosine+mse"),
    "causal-lm": ("kl",),
}
"""The losses each model kind supports (``LoadedModel.kind``)."""
DEFAULT_LOSS = {"image-classifier": "labels", "encoder": "cosine", "causal-lm": "kl"}
"""What ``loss="auto"`` means for each model kind."""
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
SHADOWS = ("dense", "pruned")
TRAINABLE = ("all", "sparse")
MAX_STEPS = 20_000
"""Most optimiser steps in one recovery run (keeps a browser run bounded)."""
MAX_INTERVALS = 200
"""Most evaluation intervals (``ceil(steps / eval_every)``): every one runs the quality metric."""
MAX_BATCH = 1024
MAX_LR = 1.0
MAX_LAMBDA_W = 1.0

KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    # Measured on digits:mlp 2:4 magnitude: AdamW at 1e-3 recovers most of the accuracy in 100 steps.
    "image-classifier": {"lr": 1e-3, "batch_size": 64, "eval_every": 25},
    # Fine-tuning a pretrained transformer wants a small step; 16 sentences keep a CPU step short.
    "encoder": {"lr": 1e-4, "batch_size": 16, "eval_every": 50},
    "causal-lm": {"lr": 1e-4, "batch_size": 8, "eval_every": 50},
}
"""Per model kind, the ``RecoveryConfig`` fields whose class default does not suit it."""


@dataclass(frozen=True)
class RecoveryConfig(serial.JsonConfig):
    """One recovery fine-tuning run of a pruned model. Serialises to JSON (``to_json``/``from_json``)."""

    mode: str = "fixed"
    """``fixed``: the pruned mask stays as it is, pruned weights get no gradient. ``ste``: the N:M
    mask is recomputed from the dense shadow weights at every step and the gradient reaches every
    weight (straight-through). ``srste``: STE plus SR-STE's decay λ_w(1−E)⊙W on the pruned weights."""
    steps: int = 200
    """Optimiser steps, 1..20,000: the budget, the same for every mode."""
    lr: float = 1e-4
    """Peak learning rate, 0 < lr <= 1."""
    batch_size: int = 16
    """Examples per step (images, or sentences of the corpus), 1..1024 and at most the examples there are."""
    optimizer: str = "adamw"
    """``adamw`` or ``sgd`` (with ``momentum``). With AdamW the SR-STE decay goes through Adam's
    normalisation, like the rest of the gradient."""
    momentum: float = 0.9
    """SGD momentum, 0 <= momentum < 1 (ignored by AdamW)."""
    weight_decay: float = 0.0
    """Weight decay of the trained parameters (AdamW: decoupled; SGD: L2), 0..1."""
    schedule: str = "cosine"
    """Learning-rate schedule over the steps: ``cosine`` (to zero, no warm-up) or ``constant``."""
    lambda_w: float = DEFAULT_LAMBDA_W
    """SR-STE only: decay λ_w of the pruned weights, 0..1 (2e-4 in the official SR-STE code)."""
    loss: str = "auto"
    """``auto`` (labels for digits, cosine for encoders, kl for causal LMs), ``labels`` (cross-entropy
    on the digits training split), ``kl`` (KL divergence to the dense model's logits: digits, or
    next-token distributions of a causal LM), ``cosine`` (1 − cosine between the pruned and dense
    sentence embeddings), ``mse`` (mean squared error between the mean-pooled embeddings before
    normalisation; on unit vectors it would only rescale the cosine loss) or ``cosine+mse``."""
    eval_every: int = 50
    """Steps between two quality evaluations (and SAD/flip intervals), 1..steps; the last step is
    always evaluated. At most 200 intervals."""
    shadow: str = "dense"
    """STE/SR-STE only: the dense weights the masks are recomputed from start as ``dense`` (the
    pruned entries get their dense model values back, so they compete with the kept ones from the
    first step) or ``pruned`` (pruned entries start at zero and must grow back through the
    straight-through gradient)."""
    train: str = "all"
    """Which parameters are trained: ``all`` or ``sparse`` (only the pruned layers' weights)."""
    seed: int = 0
    """Seed of the example order."""

    def validate(self, n_examples: int | None = None) -> None:
        """Raise ``ValueError`` with a clear message for any setting out of bounds.

        Args:
            n_examples: training examples available (the batch size may not exceed it); None skips that check.
        """
        choices = {"mode": MODES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "loss": LOSSES,
                   "shadow": SHADOWS, "train": TRAINABLE}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "eval_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "lambda_w"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS:,}, got {self.steps}")
        if not 0.0 < self.lr <= MAX_LR:
            raise ValueError(f"learning rate must be > 0 and at most {MAX_LR:g}, got {self.lr:g}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must satisfy 0 <= momentum < 1, got {self.momentum:g}")
        if not 0.0 <= self.weight_decay <= 1.0:
            raise ValueError(f"weight decay must be between 0 and 1, got {self.weight_decay:g}")
        if not 0.0 <= self.lambda_w <= MAX_LAMBDA_W:
            raise ValueError(f"λ_w (SR-STE decay) must be between 0 and {MAX_LAMBDA_W:g}, got {self.lambda_w:g}")
        limit = MAX_BATCH if n_examples is None else min(MAX_BATCH, n_examples)
        if not 1 <= self.batch_size <= limit:
            what = "" if n_examples is None or n_examples >= MAX_BATCH else f" (the training examples: {n_examples})"
            raise ValueError(f"batch size must be between 1 and {limit}{what}, got {self.batch_size}")
        if not 1 <= self.eval_every <= self.steps:
            raise ValueError(f"eval_every must be between 1 and steps ({self.steps}), got {self.eval_every}")
        if self.intervals > MAX_INTERVALS:
            raise ValueError(f"an evaluation every {self.eval_every} step(s) over {self.steps:,} steps gives "
                             f"{self.intervals:,} evaluations, over the limit of {MAX_INTERVALS}; evaluate less often")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")

    @property
    def intervals(self) -> int:
        """Evaluation intervals of a complete run (the last one may be shorter)."""
        return math.ceil(self.steps / self.eval_every) if self.eval_every >= 1 else 0

    @property
    def moves_mask(self) -> bool:
        """Whether the mask is recomputed during training (STE and SR-STE)."""
        return self.mode in ("ste", "srste")

    @property
    def decay(self) -> float:
        """The λ_w actually applied (0 unless SR-STE)."""
        return float(self.lambda_w) if self.mode == "srste" else 0.0

    def resolve_loss(self, kind: str) -> str:
        """The loss used for a model kind (``auto`` resolved).

        Args:
            kind: ``LoadedModel.kind``.

        Returns:
            One of ``LOSSES_BY_KIND[kind]``.

        Raises:
            ValueError: a kind recovery does not handle, or a loss that kind cannot take.
        """
        if kind not in LOSSES_BY_KIND:
            raise ValueError(f"recovery supports {', '.join(LOSSES_BY_KIND)} models, not {kind!r}")
        loss = DEFAULT_LOSS[kind] if self.loss == "auto" else self.loss
        if loss not in LOSSES_BY_KIND[kind]:
            raise ValueError(f"loss {loss!r} does not apply to a model of kind {kind!r}; "
                             f"use one of {', '.join(LOSSES_BY_KIND[kind])} (or auto)")
        return loss

    def label(self) -> str:
        """Short human label, e.g. ``SR-STE λ=0.0002 · 200 steps``."""
        head = MODE_LABELS.get(self.mode, self.mode)
        if self.mode == "srste":
            head += f" λ={self.lambda_w:g}"
        return f"{head} · {self.steps:,} steps"


def default_recovery_config(kind: str, **overrides: Any) -> RecoveryConfig:
    """Settings that suit a model kind: the class defaults plus ``KIND_DEFAULTS[kind]``.

    Args:
        kind: ``LoadedModel.kind`` (``image-classifier``, ``encoder`` or ``causal-lm``).
        **overrides: any ``RecoveryConfig`` field (they win over the kind's defaults).

    Returns:
        The config (not validated).
    """
    if kind not in KIND_DEFAULTS:
        raise ValueError(f"recovery supports {', '.join(KIND_DEFAULTS)} models, not {kind!r}")
    return replace(RecoveryConfig(), **{**KIND_DEFAULTS[kind], **overrides})
