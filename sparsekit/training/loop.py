"""The training loop: a digits model trained from scratch with one method, evaluated every epoch,
checkpointed to the run store by ``run_and_save``."""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .. import serial
from ..flips import FlipTracker, FlipWindow
from ..masks import serial_kernels, unstructured_mask
from ..models.digits import DigitsData, build_digits_model, digits_split
from ..progress import ProgressArg, ProgressFn, reporter
from ..resume import ResumeError, ResumeState, capture, restore
from ..store import process_token
from ..topology import MaskHistory
from .config import TrainConfig, zhu_gupta_sparsity
from .records import EpochMetrics, RunRecord, StepCallback, TrainProgress, run_from_bytes, run_to_bytes
from .ste import FixedMask, _nm_mask_fn, _NMStraightThrough, dense_weight, layer_plan, mask_buffer
from .store import clear_resume_state, load_cell_state, load_resume_state, resume_key, save_resume_state, save_run


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
                weight = dense_weight(layer)
                scores = torch.rand(weight.shape, generator=gen)
                mask = self.mask_fns[name](weight.detach(), scores)
                parametrize.register_parametrization(layer, "weight", FixedMask(mask), unsafe=True)
        elif method == "gradual":
            for layer in self.sparse.values():
                ones = torch.ones(dense_weight(layer).shape, dtype=torch.bool)
                parametrize.register_parametrization(layer, "weight", FixedMask(ones), unsafe=True)

    def dense_weight(self, name: str) -> torch.Tensor:
        return dense_weight(self.sparse[name])

    def masks(self) -> dict[str, torch.Tensor]:
        """The masks the next forward uses (dense: the N:M masks it would get)."""
        out = {}
        for name, layer in self.sparse.items():
            if self.config.method in ("random", "gradual"):
                out[name] = mask_buffer(layer).clone()
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
            mask = mask_buffer(self.sparse[name])
            w = self.dense_weight(name)
            # Scores zero at already-pruned weights keep the masks nested as sparsity grows.
            keep = unstructured_mask(w, sparsity, scores=w.abs() * mask)
            mask.copy_(keep)
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
    checkpoint: Callable[[RunRecord], object] | None = None,
    progress: ProgressArg = True,
    resume_from: ResumeState | None = None,
    save_state: Callable[[ResumeState], object] | None = None,
) -> RunRecord:
    """Train a digits model from scratch with one sparse-training method.

    Args:
        config: the settings (validated here).
        name: a label for the run (default: the config's label).
        data: the digits split (default ``digits_split()``).
        callback: ``callback(TrainProgress)`` after every step and every epoch; return True to stop.
        checkpoint: ``checkpoint(record)`` at the start, after every epoch and at the end, including
            when the run stops or raises (then before the exception propagates).
        progress: True (default) draws a bar of the steps done (``sparsekit.progress``), with the epoch,
            loss and held-out accuracy; False/None is silent; a ``progress(fraction, message)`` callable
            receives the same. Independent of ``callback``.
        resume_from: a ``ResumeState`` that ``save_state`` received from an earlier call with the same
            config and data: the run continues from that epoch's end (its record, weights, masks,
            optimiser, schedule and random generators) and ends exactly as a run never stopped
            (wall times aside). The ``start`` callback then reports the steps already done.
        save_state: ``save_state(ResumeState)`` at the end of every epoch but the last, before the
            epoch's callback (so a stop asked there resumes from that epoch).

    Returns:
        The ``RunRecord``; ``status`` is ``complete``, ``stopped`` (callback asked), or ``failed``
        (the loss became NaN/inf; ``message`` says when).

    Raises:
        ResumeError: ``resume_from`` does not fit this config (nothing has run then).
    """
    data = data if data is not None else digits_split()
    n_train = int(data.x_train.shape[0])
    config.validate(n_train)
    # A forked RNG: seeding must not reset the caller's global random state.
    # The per-step masks of these small layers take microseconds; a parallel numba launch costs more
    # than the work, and on a busy machine each parallel region can wait milliseconds for a second
    # core (measured: 13 ms instead of 75 µs per step on this shared 2-core box).
    with torch.random.fork_rng(devices=[]), serial_kernels(), reporter(progress, "train") as bar:
        torch.manual_seed(config.seed)
        return _train(config, name, data, _with_bar(callback, bar), checkpoint, resume_from, save_state)


def _with_bar(callback: StepCallback | None, bar: ProgressFn | None) -> StepCallback | None:
    """``callback``, also moving ``bar`` to the steps done (the message: epoch, loss, held-out accuracy)."""
    if bar is None:
        return callback

    def both(p: TrainProgress) -> bool | None:
        if p.metrics is not None:
            message = f"epoch {p.epoch:.3g}: accuracy {p.metrics.test_accuracy:.1f}%"
        else:
            message = f"epoch {p.epoch:.2f}, step {p.step}/{p.total_steps}, loss {p.loss:.3g}"
        bar(p.step / p.total_steps if p.total_steps else 1.0, message)
        return callback(p) if callback is not None else None

    return both


def _optimizer(config: TrainConfig, params: list[torch.Tensor],
               total: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                                     weight_decay=config.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    return opt, sched


def _capture(run: _Run, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR,
             gen: torch.Generator, tracker: FlipTracker, record: RunRecord) -> ResumeState:
    """The state at an epoch's end: weights and mask buffers, optimiser, schedule, generators, flips, record."""
    return capture("training", record.steps_done, config=serial.to_json(run.config), module=run.model, opt=opt,
                   sched=sched, generator=gen, tracker=tracker, record=run_to_bytes(record))


def _restore(state: ResumeState, run: _Run, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR,
             gen: torch.Generator, spe: int) -> tuple[RunRecord, FlipTracker]:
    """Put a ``_capture``d state back.

    Raises:
        ResumeError: a state of another config, or one that does not fit the model.
    """
    blob, tracker, _ = restore(state, "training", config=serial.to_json(run.config), module=run.model, opt=opt,
                               sched=sched, generator=gen)
    try:
        record = run_from_bytes(blob)
    except Exception as err:
        raise ResumeError(f"unreadable resume state: {err}") from None
    if record.steps_done != state.step or record.steps_done % spe or record.status != "running":
        raise ResumeError(f"the resume state is not at an epoch's end (step {record.steps_done}, {spe} per epoch)")
    return record, tracker


def _train(config: TrainConfig, name: str, data: DigitsData, callback: StepCallback | None,
           checkpoint: Callable[[RunRecord], object] | None, resume_from: ResumeState | None = None,
           save_state: Callable[[ResumeState], object] | None = None) -> RunRecord:
    run = _Run(config)
    model = run.model
    n_train = int(data.x_train.shape[0])
    spe = config.steps_per_epoch(n_train)
    total = config.epochs * spe
    prune_steps: set[int] = set()
    if config.method == "gradual":
        t0, n_int, dt = config.gradual_schedule(total)
        prune_steps = {t0 + k * dt for k in range(n_int + 1)}

        def prune(step: int) -> None:
            run.prune_to(zhu_gupta_sparsity(step, initial=config.initial_sparsity, final=config.target_sparsity,
                                            start=t0, n=n_int, every=dt))

    opt, sched = _optimizer(config, list(model.parameters()), total)
    gen = torch.Generator().manual_seed(config.seed)
    snap_period = (spe if config.snapshot_unit == "epoch" else 1) * config.snapshot_every
    # Per-step flips need the masks after every step: 0.14 ms for all of the CNN's layers
    # (measured, serial kernels), small next to the step's forward and backward pass.
    tracker: FlipTracker | None = None
    if resume_from is not None:
        record, tracker = _restore(resume_from, run, opt, sched, gen, spe)
        record.status, record.message, record.owner = "running", "", process_token()
    else:
        record = RunRecord(config=config, name=name, created=time.time(), steps_per_epoch=spe,
                           history=MaskHistory({k: tuple(dense_weight(v).shape) for k, v in run.sparse.items()}),
                           dense_layers=dict(run.dense), owner=process_token(), prune_steps=sorted(prune_steps))
    # A resumed run's clock goes on from its checkpoint.
    start_time = time.perf_counter() - record.seconds

    def snapshot(step: int, masks: dict[str, torch.Tensor] | None = None) -> None:
        if not record.history.steps or record.history.steps[-1] != step:
            record.history.record(step, step / spe, masks if masks is not None else run.masks())
            window = tracker.close() if tracker is not None else None
            record.flip_windows.append(window or FlipWindow.empty({k: record.history.numel(k)
                                                                   for k in record.history.layers}))

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

    step = record.steps_done
    loss_value = step_lr = float("nan")
    try:
        if resume_from is None:
            if 0 in prune_steps:
                prune(0)
            start_masks = run.masks()
            snapshot(0, start_masks)
            tracker = FlipTracker(start_masks)
        if checkpoint is not None:
            checkpoint(record)
        model.train()
        if callback is not None and callback(TrainProgress("start", step, total, step / spe, loss_value, None,
                                                           record, model)):
            return finish("stopped", f"stopped at step {step} of {total}")
        stop = False
        for epoch in range(step // spe, config.epochs):
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
                masks = None
                if tracker is not None:
                    try:
                        masks = run.masks()
                        record.step_flip_rate.append(tracker.step_rate(tracker.update(masks)))
                    except ValueError:
                        # NaN weights cannot be ranked; the next step's loss check reports the failure.
                        tracker, masks = None, None
                if step % snap_period == 0:
                    snapshot(step, masks)
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
            if save_state is not None and tracker is not None and epoch + 1 < config.epochs:
                save_state(_capture(run, opt, sched, gen, tracker, record))
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


def run_and_save(
    config: TrainConfig,
    *,
    name: str = "",
    data: DigitsData | None = None,
    callback: StepCallback | None = None,
    progress: ProgressArg = True,
    resume: bool = True,
) -> RunRecord:
    """``train`` with the run kept in the disk cache from its first step: saved at the start, after
    every epoch, and at the end, also when it is stopped or raises (status ``stopped``/``failed``).

    A run stopped half-way (the callback, Ctrl-C, an exception, the app's Stop button, or its process
    gone) is continued by the same call: at every epoch's end but the last, the run's full state
    (weights and masks, optimiser, schedule, random generators, flip counters, the record so far) is
    kept in the disk cache under the config and the data (``sparsekit.resume``), and a call that finds
    the state of a stopped run continues that run (same ``run_id``, status back to ``running``) from its
    last finished epoch, training only the epochs left. The result equals an uninterrupted run's
    (weights, metrics, masks, step losses, flip rates; only wall times differ). The state is dropped
    when the run completes or fails on a non-finite loss. A state that cannot be read is ignored.

    Args:
        config: the settings (a ``ValueError`` for bad ones is raised before anything is saved).
        name: the run's name (a continued run keeps the name it has in the store).
        data: the digits split (default ``digits_split()``).
        callback: as for ``train``.
        progress: as for ``train`` (True: a bar of the steps done).
        resume: False starts afresh (a new run) even when a stopped run of this config could be continued.

    Returns:
        The saved ``RunRecord`` (with its ``run_id``).
    """
    data = data if data is not None else digits_split()
    config.validate(int(data.x_train.shape[0]))
    key = resume_key(config, data)
    found = load_resume_state(key) if resume else None
    if not resume:
        clear_resume_state(key)
    stored_name = [found[1].name] if found is not None else []

    def checkpoint(record: RunRecord) -> None:
        if stored_name:  # a continued run keeps a name given in the store since it stopped
            record.name = stored_name.pop()
        save_run(record)

    def keep(state: ResumeState) -> None:
        save_resume_state(key, state)

    try:
        record = train(config, name=name, data=data, callback=callback, checkpoint=checkpoint, progress=progress,
                       resume_from=found[0] if found is not None else None, save_state=keep)
    except ResumeError:  # a state that does not fit (checked before anything ran): start afresh
        stored_name.clear()
        record = train(config, name=name, data=data, callback=callback, checkpoint=checkpoint, progress=progress,
                       save_state=keep)
    if record.status != "stopped":
        clear_resume_state(key)
    return record


def train_resuming(config: TrainConfig, *, data: DigitsData | None = None) -> RunRecord:
    """``train`` (silent) that a study cell calls: its last epoch's state is kept in the disk cache under
    the config and the data (not in the run store), so a cell interrupted half-way (Ctrl-C, a stop, a
    worker gone) is continued by the same call from its last finished epoch, with the result of a run
    never stopped. The state is dropped once the run ends.

    Args:
        config: the settings.
        data: the digits split (default ``digits_split()``).

    Returns:
        The ``RunRecord`` (not saved in the run store).
    """
    data = data if data is not None else digits_split()
    config.validate(int(data.x_train.shape[0]))
    key = resume_key(config, data, owner="study-cell")

    def keep(state: ResumeState) -> None:
        save_resume_state(key, state)

    found = load_cell_state(key)
    try:
        record = train(config, data=data, progress=None, resume_from=found, save_state=keep)
    except ResumeError:  # a state that does not fit (checked before anything ran): start afresh
        record = train(config, data=data, progress=None, save_state=keep)
    if record.status != "stopped":
        clear_resume_state(key)
    return record
