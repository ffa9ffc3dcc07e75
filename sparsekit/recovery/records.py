"""What a recovery run produces (``RecoveryRecord``), the gap-recovered formula, and the record's
safetensors form (weights and masks as tensors, everything else as JSON metadata, no pickle)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from .. import serial
from ..display import Card, Shown, fmt, percent
from ..flips import FlipWindow, window_series
from ..sparsify import SparsifyConfig
from ..store import RecordHeader, finite_json, pack_run, run_meta, unpack_masked_run
from ..topology import MaskHistory, run_tensors
from .config import RecoveryConfig

FORMAT = "sparsekit-recovery-run"
FORMAT_VERSION = 1
"""Version of the safetensors entry (``record_to_bytes``); a newer one is refused on load."""
HEADER = RecordHeader(FORMAT, FORMAT_VERSION, "recovery-run entry")
"""The header of a recovery run's entry."""
GAP_TOLERANCE = 1e-9
"""A dense-to-sparse gap smaller than this (relative to the larger of |dense|, |before| and 1)
counts as no gap: nothing to recover, and no ratio to report."""


def gap_recovered(dense: float, before: float, after: float, *, higher_is_better: bool = True) -> float | None:
    """Share of the quality lost to pruning that fine-tuning won back: (after − before) / (dense − before).

    The ratio reads the same for higher- and lower-is-better metrics (numerator and denominator
    change sign together); the direction only decides whether pruning opened a gap at all.

    Args:
        dense: the dense model's metric.
        before: the pruned model's metric before recovery.
        after: the metric after recovery.
        higher_is_better: the metric's direction (False for perplexity, loss ...).

    Returns:
        1.0 = back to dense, 0.0 = no change, < 0 = worse than before, > 1 = better than dense;
        None when pruning cost nothing (before at least as good as dense, within ``GAP_TOLERANCE``)
        or a value is not finite.
    """
    if not all(math.isfinite(v) for v in (dense, before, after)):
        return None
    gap = (dense - before) if higher_is_better else (before - dense)
    if gap <= GAP_TOLERANCE * max(1.0, abs(dense), abs(before)):
        return None
    return (after - before) / (dense - before)


@dataclass(frozen=True)
class RecoveryInterval:
    """One evaluation point of a recovery run and the steps that led to it."""

    step: int
    """Optimiser steps done (0: the pruned model before recovery)."""
    quality: dict[str, float]
    """The model's own metrics (``LoadedModel.quality``) at this step."""
    train_loss: float
    """Mean training loss of the interval's steps (NaN for step 0)."""
    lr: float
    """Learning rate of the interval's last step (NaN for step 0)."""
    seconds: float
    """Wall time since the run started."""
    sad: dict[str, int]
    """Layer -> SAD between the masks at the previous evaluation and now (``sparsekit.sad``)."""
    sad_from_start: dict[str, int]
    """Layer -> SAD between the pruned model's masks and now."""
    flips: FlipWindow
    """Per-step flips and oscillating entries per layer over the interval's steps."""

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (``from_json`` reads it back; NaN survives Python's json)."""
        return serial.to_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RecoveryInterval":
        """Inverse of ``to_json``, under ``sparsekit.serial``'s rule."""
        return serial.from_json(cls, data)


@dataclass(repr=False)
class RecoveryRecord(Shown):
    """Everything a recovery run produced; restores exactly from the run store.

    Attributes:
        config: the recovery settings.
        sparsify_config: how the model was pruned.
        model_spec: the ``LoadedModel.spec`` of the dense model.
        model_name: its display name.
        loss_kind: the loss used (``auto`` resolved).
        metric: the headline metric (the first key of the model's quality).
        higher_is_better: the headline metric's direction.
        dense_quality: the dense model's metrics.
        name: a user-chosen name (default: the config's label).
        run_id: the store id (empty until saved).
        status: ``running``, ``complete``, ``stopped`` or ``failed``.
        message: why a run stopped or failed.
        created: Unix time the run started.
        seconds: wall time so far.
        steps_done: optimiser steps done.
        intervals: the evaluation points, the first at step 0 (the pruned model before recovery).
        step_loss: training loss of every step.
        step_flip_rate: the pooled flip rate of every step (0 throughout in ``fixed`` mode).
        run_flips: flips and oscillating entries over the whole run (one window).
        history: the masks at the start (the pruned model's) and at the end.
        weights: the recovered model's state dict, masks applied (the architecture of the dense model).
        notes: remarks (e.g. corpus sentences that are also evaluation sentences).
        owner: the process running it (``sparsekit.store.process_token``).
    """

    config: RecoveryConfig
    sparsify_config: SparsifyConfig
    model_spec: str
    model_name: str = ""
    loss_kind: str = ""
    metric: str = ""
    higher_is_better: bool = True
    dense_quality: dict[str, float] = field(default_factory=dict)
    name: str = ""
    run_id: str = ""
    status: str = "running"
    message: str = ""
    created: float = 0.0
    seconds: float = 0.0
    steps_done: int = 0
    intervals: list[RecoveryInterval] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    step_flip_rate: list[float] = field(default_factory=list)
    run_flips: FlipWindow | None = None
    history: MaskHistory = field(default_factory=lambda: MaskHistory({}))
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    owner: str = ""

    FIGURE = "recovery_figure"

    def summary_card(self) -> Card:
        """The headline metric before → after recovery next to dense, the gap recovered, the flip rate,
        one row per evaluation."""
        gap, flips = self.gap_recovered, self.run_flips
        head = {"status": self.status, "mode": self.config.label(), "pruned": self.sparsify_config.label(),
                "steps": f"{self.steps_done:,} of {self.config.steps:,}",
                self.metric or "metric": f"{fmt(self.before)} → {fmt(self.after)} (dense {fmt(self.dense)})",
                "gap recovered": "— (no gap)" if gap is None else percent(gap),
                "flip rate per step": "—" if flips is None else f"{flips.flip_rate():.3%} (oscillating "
                                                                  f"{flips.oscillation_rate():.2%})"}
        rows = [{"step": iv.step, self.metric or "metric": iv.quality.get(self.metric), "train loss": iv.train_loss,
                 "SAD": sum(iv.sad.values()), "flip rate": f"{iv.flips.flip_rate():.3%}", "seconds": iv.seconds}
                for iv in self.intervals]
        return Card(f"RecoveryRecord {self.label}", head, rows, " ".join([self.message, *self.notes]).strip())

    @property
    def label(self) -> str:
        """The name, or ``<recovery label> · <model name> <pattern>`` (the name, not the spec: no server path)."""
        return self.name or f"{self.config.label()} · {self.model_name} {self.sparsify_config.label()}"

    @property
    def numel(self) -> dict[str, int]:
        """Layer -> mask entries of the pruned layers."""
        return {k: self.history.numel(k) for k in self.history.layers}

    def headline(self, index: int) -> float:
        """The headline metric at evaluation ``index`` (NaN when the run has none yet)."""
        if not self.intervals:
            return float("nan")
        return float(self.intervals[index].quality.get(self.metric, float("nan")))

    @property
    def before(self) -> float:
        """Headline metric of the pruned model before recovery."""
        return self.headline(0)

    @property
    def after(self) -> float:
        """Headline metric at the last evaluation."""
        return self.headline(-1)

    @property
    def dense(self) -> float:
        """Headline metric of the dense model."""
        return float(self.dense_quality.get(self.metric, float("nan")))

    @property
    def gap_recovered(self) -> float | None:
        """``gap_recovered(dense, before, after)`` of the headline metric."""
        return gap_recovered(self.dense, self.before, self.after, higher_is_better=self.higher_is_better)

    def steps(self) -> np.ndarray:
        """The step of every evaluation."""
        return np.asarray([iv.step for iv in self.intervals], dtype=np.int64)

    def sad_series(self, layer: str | None = None, *, from_start: bool = False, fraction: bool = False) -> np.ndarray:
        """SAD at every evaluation.

        Args:
            layer: one layer, or None for the sum over the pruned layers.
            from_start: SAD to the pruned model's masks instead of to the previous evaluation.
            fraction: divide by the weights counted.

        Returns:
            float64 array, one entry per evaluation (0 at step 0).
        """
        names = self.history.layers if layer is None else [layer]
        if layer is not None and layer not in self.history.shapes:
            raise ValueError(f"unknown layer {layer!r}; pruned layers: {', '.join(self.history.layers)}")
        out = np.asarray([float(sum((iv.sad_from_start if from_start else iv.sad)[n] for n in names))
                          for iv in self.intervals], dtype=np.float64)
        denom = sum(self.numel[n] for n in names)
        return out / denom if fraction and denom else out

    def flip_series(self, measure: str = "flip_rate", layer: str | None = None) -> np.ndarray:
        """``sparsekit.flips.window_series`` over the evaluation intervals (0 at step 0)."""
        return window_series([iv.flips for iv in self.intervals], measure, layer)

    def summary(self) -> dict[str, Any]:
        """The small JSON-able description kept in the run index."""
        return {
            "run_id": self.run_id, "name": self.name, "label": self.label, "status": self.status,
            "message": self.message, "created": self.created, "seconds": self.seconds,
            "config": serial.to_json(self.config), "sparsify_config": json.loads(self.sparsify_config.to_json()),
            "model_spec": self.model_spec, "metric": self.metric, "steps_done": self.steps_done,
            "dense": self.dense, "before": self.before, "after": self.after,
            "gap_recovered": self.gap_recovered, "owner": self.owner,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: summary, per-interval metrics, per-step loss and flip rate (no weights)."""
        return finite_json({
            **self.summary(), "format": FORMAT, "version": FORMAT_VERSION, "model_name": self.model_name,
            "loss_kind": self.loss_kind, "higher_is_better": self.higher_is_better,
            "dense_quality": self.dense_quality, "intervals": [iv.to_json() for iv in self.intervals],
            "step_loss": self.step_loss, "step_flip_rate": self.step_flip_rate,
            "run_flips": self.run_flips.to_json() if self.run_flips else None,
            "layers": {k: list(v) for k, v in self.history.shapes.items()}, "notes": self.notes,
        })


@dataclass(frozen=True)
class RecoveryProgress:
    """What the progress callback sees."""

    event: str
    """``start`` (the pruned model evaluated), ``step`` (after every optimiser step) or ``eval``."""
    step: int
    """Optimiser steps done."""
    total_steps: int
    """Planned steps."""
    loss: float
    """Training loss of the latest step (NaN at the start)."""
    interval: RecoveryInterval | None
    """The new evaluation (``start``/``eval`` events), else None."""
    masks: Mapping[str, torch.Tensor]
    """Layer -> the mask the next forward uses (live: read, do not keep or change)."""
    record: RecoveryRecord
    """The run so far (live object)."""
    model: nn.Module
    """The model being trained, masks attached as parametrizations (live: read it, never change it);
    a pruned layer's dense shadow weight is ``layer.parametrizations.weight.original``."""


ProgressFn = Callable[[RecoveryProgress], None]


def record_to_bytes(record: RecoveryRecord) -> bytes:
    """A recovery run as the safetensors bytes ``record_from_bytes`` reads back: weights and packed
    masks as tensors, everything else as JSON metadata, the index summary on its own too."""
    tensors = run_tensors(record.weights, record.history)
    meta = {
        "config": serial.to_json(record.config), "sparsify_config": json.loads(record.sparsify_config.to_json()),
        "model_spec": record.model_spec, "model_name": record.model_name, "loss_kind": record.loss_kind,
        "metric": record.metric, "higher_is_better": record.higher_is_better, "dense_quality": record.dense_quality,
        "name": record.name, "run_id": record.run_id, "status": record.status, "message": record.message,
        "created": record.created, "seconds": record.seconds, "steps_done": record.steps_done,
        "intervals": [iv.to_json() for iv in record.intervals], "step_loss": record.step_loss,
        "step_flip_rate": record.step_flip_rate,
        "run_flips": record.run_flips.to_json() if record.run_flips else None,
        "shapes": {k: list(v) for k, v in record.history.shapes.items()},
        "snapshot_steps": record.history.steps, "notes": record.notes, "owner": record.owner,
    }
    # The index summary on its own too, so rebuilding the index never decodes the weights.
    return pack_run(HEADER, tensors, meta, summary=record.summary())


def summary_from_bytes(blob: bytes) -> dict[str, Any]:
    """The index summary of a stored run, read from the header only (no tensor is decoded)."""
    return json.loads(run_meta(HEADER, blob)["summary"])


def record_from_bytes(blob: bytes) -> RecoveryRecord:
    """Inverse of ``record_to_bytes``: the run, equal to the one saved.

    Raises:
        ValueError: ``blob`` is not a recovery-run entry, or has a newer format.
    """
    info, history, weights = unpack_masked_run(HEADER, blob)  # snapshots at steps: epochs are the steps
    return RecoveryRecord(
        config=RecoveryConfig.from_json(info["config"]),
        sparsify_config=SparsifyConfig.from_json(json.dumps(info["sparsify_config"])),
        model_spec=info["model_spec"], model_name=info["model_name"], loss_kind=info["loss_kind"],
        metric=info["metric"], higher_is_better=bool(info["higher_is_better"]),
        dense_quality={k: float(v) for k, v in info["dense_quality"].items()}, name=info["name"],
        run_id=info["run_id"], status=info["status"], message=info["message"], created=info["created"],
        seconds=info["seconds"], steps_done=info["steps_done"],
        intervals=[RecoveryInterval.from_json(iv) for iv in info["intervals"]],
        step_loss=list(info["step_loss"]), step_flip_rate=list(info["step_flip_rate"]),
        run_flips=FlipWindow.from_json(info["run_flips"]) if info["run_flips"] else None,
        history=history, weights=weights,
        notes=list(info["notes"]), owner=str(info.get("owner", "")),
    )
