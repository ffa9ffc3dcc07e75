"""What a training run produces (``RunRecord``), its safetensors form, and the CSV/JSON exports."""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .. import serial
from ..display import Card, Shown, fmt, percent
from ..flips import FlipWindow, window_series
from ..models.digits import ARCH_LABELS, N_CLASSES, build_digits_model
from ..store import RecordHeader, finite_json, pack_run, unpack_masked_run
from ..topology import MaskHistory, SadReport, run_tensors, sad_report
from .config import TrainConfig, default_train_config

FORMAT_VERSION = 1
"""Version of the safetensors run entry (``run_to_bytes``); a newer one is refused on load."""
HEADER = RecordHeader("sparsekit-training-run", FORMAT_VERSION, "training-run entry")
"""The header of a training run's entry."""


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


@dataclass(repr=False)
class RunRecord(Shown):
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
        step_flip_rate: the pooled flip rate of the sparse layers' masks at every step (empty for
            runs saved before flip rates were recorded).
        flip_windows: one ``FlipWindow`` per mask snapshot, covering the steps since the previous
            snapshot (flips and oscillating entries per layer); empty for older runs.
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
    step_flip_rate: list[float] = field(default_factory=list)
    flip_windows: list[FlipWindow] = field(default_factory=list)

    FIGURE = "run_figure"

    def summary_card(self) -> Card:
        """Final held-out metrics, epochs done, how far the topology still moves (SAD), one row per epoch."""
        cfg, last = self.config, (self.epochs[-1] if self.epochs else None)
        head = {"status": self.status, "method": cfg.label(),
                "epochs": f"{fmt(last.epoch if last else 0.0)} of {cfg.epochs} ({self.steps_done:,} steps)"}
        if last is not None:
            head.update({"held-out accuracy": f"{last.test_accuracy:.2f}%", "test loss": fmt(last.test_loss),
                         "kept": percent(last.density)})
        rep = self.sad()
        if rep.layers and len(rep.steps) > 1:
            last_sad = float(rep.series("interval", fraction=True)[-1])
            whole = float(rep.series("from_first", fraction=True)[-1])
            head["SAD last interval / first → final"] = f"{percent(last_sad, 2)} / {percent(whole, 2)}"
        rows = [{"epoch": e.epoch, "train loss": e.train_loss, "test loss": e.test_loss,
                 "accuracy (%)": e.test_accuracy, "kept": percent(e.density), "seconds": e.seconds}
                for e in self.epochs]
        note = " ".join(t for t in (self.message, chance_warning(self)) if t)
        return Card(f"RunRecord {self.name}".strip(), head, rows, note)

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
            "config": serial.to_json(self.config), "epochs_done": self.epochs[-1].epoch if self.epochs else 0.0,
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
            "format": HEADER.format,
            "version": HEADER.version,
            "steps_per_epoch": self.steps_per_epoch,
            "steps_done": self.steps_done,
            "epochs": [serial.to_json(e) for e in self.epochs],
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
        if self.flip_windows:
            out["step_flip_rate"] = list(self.step_flip_rate)
            out["flips"] = {measure: window_series(self.flip_windows, measure).tolist()
                            for measure in ("flip_rate", "oscillating", "oscillation_rate")}
        if include_masks:
            out["masks_hex"] = {name: [b.hex() for b in blobs] for name, blobs in self.history.packed.items()}
        return finite_json(out)  # a diverged loss (NaN) is exported as null


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


def run_to_bytes(record: RunRecord) -> bytes:
    """A run as safetensors bytes: final weights and packed mask snapshots as tensors, the rest as
    JSON metadata (no pickle anywhere).

    Args:
        record: the run.

    Returns:
        The bytes ``run_from_bytes`` reads back.
    """
    tensors = run_tensors(record.weights, record.history)
    meta = {
        "config": serial.to_json(record.config), "name": record.name, "run_id": record.run_id,
        "status": record.status, "message": record.message, "created": record.created, "seconds": record.seconds,
        "steps_per_epoch": record.steps_per_epoch, "steps_done": record.steps_done,
        "epochs": [serial.to_json(e) for e in record.epochs], "step_loss": record.step_loss,
        "shapes": {k: list(v) for k, v in record.history.shapes.items()},
        "snapshot_steps": record.history.steps, "snapshot_epochs": record.history.epochs,
        "dense_layers": record.dense_layers, "prune_steps": record.prune_steps, "owner": record.owner,
        "step_flip_rate": record.step_flip_rate, "flip_windows": [w.to_json() for w in record.flip_windows],
    }
    return pack_run(HEADER, tensors, meta)


def run_from_bytes(blob: bytes) -> RunRecord:
    """Inverse of ``run_to_bytes``.

    Args:
        blob: bytes written by ``run_to_bytes``.

    Returns:
        The run, equal to the one saved.

    Raises:
        ValueError: not a training-run entry, or a newer format.
    """
    info, history, weights = unpack_masked_run(HEADER, blob, epochs_key="snapshot_epochs")
    return RunRecord(
        config=TrainConfig.from_json(info["config"]), name=info["name"], run_id=info["run_id"],
        status=info["status"], message=info["message"], created=info["created"], seconds=info["seconds"],
        steps_per_epoch=info["steps_per_epoch"], steps_done=info["steps_done"],
        epochs=[serial.from_json(EpochMetrics, e) for e in info["epochs"]], step_loss=list(info["step_loss"]),
        history=history, dense_layers=dict(info["dense_layers"]), prune_steps=list(info["prune_steps"]),
        weights=weights,
        owner=str(info.get("owner", "")),
        # Both absent from runs saved before flip rates were recorded: such runs load without them.
        step_flip_rate=list(info.get("step_flip_rate", [])),
        flip_windows=[FlipWindow.from_json(w) for w in info.get("flip_windows", [])],
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
                   "m": rec.config.m, "arch": rec.config.arch, **serial.to_json(e)}
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


def sad_summary(records: Sequence[RunRecord], reports: Mapping[str, SadReport] | None = None, *,
                layer: str | None = None, fraction: bool = True) -> list[dict[str, Any]]:
    """One row per run comparing how far its topology still moves, next to its results.

    Args:
        records: the runs.
        reports: run id -> its ``SadReport`` where already computed (others are computed here).
        layer: one layer's SAD, or None for all sparse layers; a run without that layer reports
            all of its layers.
        fraction: SAD as a fraction of the weights counted instead of a number of weights.

    Returns:
        Dicts with ``name``, ``status``, ``accuracy (%)``, ``test loss`` and ``kept`` (last epoch,
        None before one), ``snapshots``, ``seconds``; runs with at least two snapshots also have
        ``SAD, last interval``, ``SAD, second half`` (interval SAD summed over the snapshots after
        the middle one) and ``SAD, first → final``.
    """
    reports = reports or {}
    out = []
    for rec in records:
        rep = reports.get(rec.run_id) or rec.sad()
        last = rec.epochs[-1] if rec.epochs else None
        row: dict[str, Any] = {
            "name": rec.label, "status": rec.status, "accuracy (%)": rec.final_accuracy,
            "test loss": last.test_loss if last else None, "kept": last.density if last else None,
            "snapshots": len(rec.history), "seconds": rec.seconds,
        }
        if rep.layers and len(rep.steps) > 1:
            which = layer if layer in rep.numel else None
            interval = rep.series("interval", which, fraction=fraction)
            row["SAD, last interval"] = float(interval[-1])
            row["SAD, second half"] = float(interval[len(interval) // 2 + 1:].sum())
            row["SAD, first → final"] = float(rep.series("from_first", which, fraction=fraction)[-1])
        out.append(row)
    return out


CHANCE_MIN_EPOCHS = 3
"""Epochs a run gets before ``at_chance`` calls it stuck (a ViT may need two to leave chance)."""


def at_chance(record: RunRecord, *, num_classes: int = N_CLASSES, min_epochs: int = CHANCE_MIN_EPOCHS,
              accuracy_points: float = 5.0, loss_tolerance: float = 0.05) -> bool:
    """Whether a run has learnt nothing: after ``min_epochs`` epochs its latest held-out accuracy
    is within ``accuracy_points`` of chance (100 / classes) and its held-out loss within
    ``loss_tolerance`` (relative) of ln(classes), the loss of a uniform guess.

    Args:
        record: the run (its per-epoch metrics are read).
        num_classes: classes of the task (10 digits).
        min_epochs: epochs done before a run can be called stuck.
        accuracy_points: percentage points around chance that still count as chance.
        loss_tolerance: relative distance to ln(classes) that still counts as chance.

    Returns:
        True when both the accuracy and the loss sit at chance.
    """
    if not record.epochs or record.epochs[-1].epoch < min_epochs:
        return False
    last = record.epochs[-1]
    chance_loss = math.log(num_classes)
    return (abs(last.test_accuracy - 100.0 / num_classes) <= accuracy_points
            and abs(last.test_loss - chance_loss) <= loss_tolerance * chance_loss)


def _settings_text(cfg: TrainConfig) -> str:
    return f"{'AdamW' if cfg.optimizer == 'adamw' else 'SGD'}, lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}"


def chance_warning(record: RunRecord, *, num_classes: int = N_CLASSES) -> str | None:
    """A sentence for a run that ``at_chance`` calls stuck, saying what to change; None otherwise.

    Args:
        record: the run.
        num_classes: classes of the task.

    Returns:
        The warning, or None when the run learns.
    """
    if not at_chance(record, num_classes=num_classes):
        return None
    cfg, last = record.config, record.epochs[-1]
    head = (f"{record.label} is at chance after {last.epoch:g} epochs: held-out accuracy {last.test_accuracy:.1f} % "
            f"(chance {100 / num_classes:g} %), loss {last.test_loss:.3f} (ln {num_classes} = "
            f"{math.log(num_classes):.3f}). It is not learning: ")
    ref = default_train_config(cfg.arch)
    if (cfg.optimizer, cfg.lr, cfg.weight_decay) != (ref.optimizer, ref.lr, ref.weight_decay):
        return head + (f"these settings ({_settings_text(cfg)}) do not train the {ARCH_LABELS[cfg.arch]}; its defaults "
                       f"do ({_settings_text(ref)}).")
    return head + f"try more epochs, a smaller batch or a lower learning rate (now {cfg.lr:g})."
