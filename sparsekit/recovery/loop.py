"""The recovery loop: fine-tune a copy of a pruned model with a fixed or a moving (STE / SR-STE)
mask, evaluating its own quality metric every ``eval_every`` steps."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import serial
from ..flips import FlipTracker
from ..layers import GroupedView, grouped_view
from ..masks import nm_mask, sad, serial_kernels
from ..models.base import LoadedModel
from ..models.sentences import SENTENCES
from ..progress import ProgressFn as BarFn
from ..progress import reporter
from ..resume import ResumeError, ResumeState, capture, restore
from ..sparsify import SparsifyResult
from ..store import process_token
from ..topology import MaskHistory
from ..training.ste import FixedMask, dense_weight, mask_buffer, sparse_forward_weight, weight_parametrizations
from .config import RecoveryConfig
from .objectives import Objective, clean_corpus, make_objective
from .records import ProgressFn, RecoveryInterval, RecoveryProgress, RecoveryRecord, record_from_bytes, record_to_bytes

StopFn = Callable[[], bool]
"""Asked before every step; True stops the run there (status ``stopped``)."""


def layer_levels(result: SparsifyResult) -> dict[str, int]:
    """Kept entries per group of M of every pruned layer, read off its mask.

    A uniform N:M result has N everywhere; a non-uniform allocation gives each layer its own level.

    Args:
        result: an N:M ``SparsifyResult``.

    Returns:
        layer -> n.

    Raises:
        ValueError: a mask whose groups of M do not all keep the same number of entries.
    """
    m = result.config.m
    levels = {}
    for name, mask in result.masks.items():
        view = result.views.get(name)
        mat = view.matrix(mask) if view is not None else mask.reshape(mask.shape[0], -1)
        per_group = mat.reshape(-1, m).sum(-1)
        n = int(per_group[0]) if per_group.numel() else 0
        if per_group.numel() == 0 or not bool((per_group == n).all()) or not 1 <= n < m:
            raise ValueError(f"the mask of {name} is not N:M with M={m} (its groups keep different counts); "
                             "STE/SR-STE can only recompute N:M masks; use mode='fixed'")
        levels[name] = n
    return levels


def check_inputs(result: SparsifyResult, loaded: LoadedModel, config: RecoveryConfig) -> dict[str, int]:
    """Validate a (result, model, config) triple before anything runs.

    Args:
        result: the pruned model to recover.
        loaded: the dense model it was pruned from.
        config: the recovery settings.

    Returns:
        layer -> N of each pruned layer for STE/SR-STE (empty for ``fixed``).

    Raises:
        ValueError: with a message saying what is wrong and what to do.
    """
    config.validate()
    config.resolve_loss(loaded.kind)
    if not result.masks:
        raise ValueError(f"nothing to recover: the result ({result.config.label()}) pruned no layer")
    dense = dict(loaded.module.named_modules())
    for name, mask in result.masks.items():
        layer = dense.get(name)
        if layer is None or tuple(getattr(layer, "weight", torch.empty(0)).shape) != tuple(mask.shape):
            raise ValueError(f"the SparsifyResult does not belong to {loaded.name}: its pruned layer {name!r} "
                             f"(shape {tuple(mask.shape)}) is not a layer of that shape in the model")
    if not config.moves_mask:
        return {}
    if result.config.pattern != "nm":
        raise ValueError(f"mode {config.mode!r} recomputes an N:M mask at every step, but this result is "
                         f"{result.config.label()}; use mode='fixed' (the mask stays as pruned)")
    return layer_levels(result)


class _MovingMask(nn.Module):
    """Parametrization: the STE / SR-STE forward weight ``E ⊙ W`` (``sparse_forward_weight``) with
    the mask ``E`` held in a buffer that ``_Session.refresh`` recomputes from the dense ``|W|`` after
    every optimiser step. The same masks as recomputing at every access (the weights only change at
    a step), without a second N:M pass per step, nor one per evaluation forward."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor, decay: float) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.decay = decay

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return sparse_forward_weight(weight, self.mask, self.decay)


def _nm_mask_fn(view: GroupedView, n: int, m: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The N:M mask of a weight, grouped as ``view`` groups it (N kept of every M)."""
    def mask_fn(weight: torch.Tensor) -> torch.Tensor:
        return view.from_matrix(nm_mask(view.matrix(weight), n, m))

    return mask_fn


class _Session:
    """The trained copy with its masks attached as parametrizations."""

    def __init__(self, result: SparsifyResult, loaded: LoadedModel, config: RecoveryConfig,
                 levels: dict[str, int]) -> None:
        # A copy of the copy: the app caches SparsifyResults and shares them between sessions.
        self.model = copy.deepcopy(result.model)
        self.config = config
        self.plain_keys = list(result.model.state_dict())
        modules = dict(self.model.named_modules())
        self.layers = {name: modules[name] for name in result.masks}
        self.start = {name: mask.detach().clone() for name, mask in result.masks.items()}
        self.mask_fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        if config.moves_mask:
            dense = dict(loaded.module.named_modules())
            m = result.config.m
            for name, layer in self.layers.items():
                view = result.views.get(name) or grouped_view(layer, result.config.conv_grouping)
                self.mask_fns[name] = _nm_mask_fn(view, levels[name], m)
                with torch.no_grad():
                    if config.shadow == "dense":
                        # Pruned entries get their dense values back: they compete with the kept
                        # ones from the first step. Kept entries keep the pruned model's values
                        # (SparseGPT rewrites them).
                        keep = self.start[name]
                        weight = dense_weight(layer)
                        weight.copy_(torch.where(keep, weight, dense_weight(dense[name]).detach()))
                mask = self.mask_fns[name](dense_weight(layer).detach())
                parametrize.register_parametrization(layer, "weight", _MovingMask(mask, config.decay), unsafe=True)
        else:
            for name, layer in self.layers.items():
                parametrize.register_parametrization(layer, "weight", FixedMask(self.start[name].clone()),
                                                     unsafe=True)
        # Dropout off and normalisation statistics frozen: the targets come from the dense model
        # in eval mode, and a pretrained model's statistics should not drift on small batches.
        self.model.eval()
        # Set on the copy either way: the flags it inherited from the shared model are not a choice.
        trained = {id(weight_parametrizations(layer).original) for layer in self.layers.values()}
        for p in self.model.parameters():
            p.requires_grad_(config.train == "all" or id(p) in trained)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def masks(self) -> dict[str, torch.Tensor]:
        """The mask each pruned layer's next forward uses (the live buffers)."""
        return {name: mask_buffer(layer) for name, layer in self.layers.items()}

    @torch.no_grad()
    def refresh(self) -> dict[str, torch.Tensor]:
        """STE/SR-STE, after an optimiser step: recompute every N:M mask from the dense shadow weights.

        Returns:
            The new masks (the live buffers).

        Raises:
            ValueError: NaN shadow weights, which no mask can rank.
        """
        for name, layer in self.layers.items():
            mask_buffer(layer).copy_(self.mask_fns[name](weight_parametrizations(layer).original))
        return self.masks()

    @torch.no_grad()
    def forward_state(self) -> dict[str, torch.Tensor]:
        """State dict of the plain architecture with the forward (masked) weights; tied tensors are
        cloned per name so safetensors can store them."""
        out = {}
        for key in self.plain_keys:
            obj: nn.Module = self.model
            *path, attr = key.split(".")
            for part in path:
                obj = getattr(obj, part)
            out[key] = getattr(obj, attr).detach().clone().contiguous()
        return out


def _optimizer(params: Sequence[torch.Tensor],
               config: RecoveryConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                                     weight_decay=config.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.steps
    if config.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    return opt, sched


def recover(
    result: SparsifyResult,
    loaded: LoadedModel,
    config: RecoveryConfig,
    *,
    corpus: Sequence[str] | None = None,
    name: str = "",
    progress: ProgressFn | bool | None = True,
    stop: StopFn | None = None,
    checkpoint: Callable[[RecoveryRecord], object] | None = None,
    objective: Objective | None = None,
    resume_from: ResumeState | None = None,
    save_state: Callable[[ResumeState], object] | None = None,
) -> RecoveryRecord:
    """Fine-tune a pruned model to win back the quality pruning cost.

    Neither ``loaded.module`` nor ``result`` is changed: a copy of ``result.model`` is trained.

    Args:
        result: ``sparsekit.sparsify(loaded, ...)``'s result.
        loaded: the dense model (its quality metric, tokenizer and outputs as distillation targets).
        config: the settings; ``ste``/``srste`` need an N:M result.
        corpus: sentences for text models (default: ``sparsekit.data.recovery_corpus()``); digits
            models train on their training split and take no corpus.
        name: a label for the run.
        progress: True (default): a bar of the steps done, with the loss and the latest quality
            (``sparsekit.progress``); False/None: silent; a callable: ``progress(RecoveryProgress)`` at the
            start, after every step and every evaluation.
        stop: asked before every step; True stops the run (evaluated once more, status ``stopped``).
        checkpoint: ``checkpoint(record)`` at the start, after every evaluation and at the end, also
            when the run fails or is interrupted.
        objective: ``make_objective(loaded, loss, corpus)`` built already, to share its distillation
            targets between runs of the same model, loss and corpus (``compare_modes`` does).
        resume_from: a ``ResumeState`` that ``save_state`` received from an earlier call with the same
            inputs: the run continues from that evaluation point (record, trained weights, masks,
            optimiser, schedule, batch order, random state, flip counters) and ends exactly as a run
            never stopped (wall times aside); the ``start`` event then reports the steps already done.
        save_state: ``save_state(ResumeState)`` after every evaluation but the last.

    Returns:
        The ``RecoveryRecord`` (status ``complete``, ``stopped``, or ``failed`` when the loss stops
        being finite).

    Raises:
        ValueError: bad settings or inputs (empty corpus, zero steps, unknown mode, a non-N:M
            result with a moving mask, a result of another model ...), before any training.
        ResumeError: ``resume_from`` does not fit these inputs (nothing has run then).
    """
    levels = check_inputs(result, loaded, config)
    if loaded.kind == "image-classifier" and corpus is not None:
        raise ValueError("a corpus is for text models; a digits model trains on its own training split")
    loss_kind = config.resolve_loss(loaded.kind)
    notes: list[str] = []
    if loaded.kind != "image-classifier":
        sentences = clean_corpus(corpus)
        shared = len({s.lower() for s in sentences} & {s.lower() for s in SENTENCES})
        if shared:
            notes.append(f"{shared} corpus sentence(s) are also evaluation sentences: the quality is then "
                         "measured partly on training text")
        corpus = sentences
    if objective is None:
        objective = make_objective(loaded, loss_kind, corpus)
    elif objective.loss_kind != loss_kind:
        raise ValueError(f"the objective given trains with loss {objective.loss_kind!r}, "
                         f"the config asks for {loss_kind!r}")
    config.validate(objective.n_examples)
    # A forked RNG: seeding must not reset the caller's random state. Masks of large layers are
    # recomputed every step; numba's parallel launch costs more than it saves on a shared machine
    # (all of MiniLM's 2:4 masks: 0.24 s in parallel, 0.011 s serial, measured).
    with (torch.random.fork_rng(devices=[]), serial_kernels(),
          reporter(None if callable(progress) else progress, "recover") as bar):
        torch.manual_seed(config.seed)
        report = progress if callable(progress) else _bar_progress(bar)
        return _recover(result, loaded, config, levels, objective, loss_kind, notes, name, report, stop, checkpoint,
                        resume_from, save_state)


def _bar_progress(bar: BarFn | None) -> ProgressFn | None:
    """A ``RecoveryProgress`` callback moving ``bar`` to the steps done (the loss; at evaluations, the quality)."""
    if bar is None:
        return None

    def show(p: RecoveryProgress) -> None:
        if p.interval is not None:
            metric = p.record.metric
            message = f"step {p.step}/{p.total_steps}: {metric} {p.interval.quality.get(metric, float('nan')):.4g}"
        else:
            message = f"step {p.step}/{p.total_steps}, loss {p.loss:.3g}"
        bar(p.step / p.total_steps if p.total_steps else 1.0, message)

    return show


@dataclass
class _SinceEval:
    """What the steps since the last evaluation left: its masks, the training loss, the last learning rate."""

    masks: dict[str, torch.Tensor]
    loss_sum: float = 0.0
    loss_n: int = 0
    lr: float = float("nan")


def _trained_names(session: _Session) -> set[str]:
    """The state-dict entries a recovery changes: the trained parameters and the mask buffers."""
    trained = {n for n, p in session.model.named_parameters() if p.requires_grad}
    return trained | {n for n, _ in session.model.named_buffers() if n.endswith("parametrizations.weight.0.mask")}


def _restore(state: ResumeState, session: _Session, opt: torch.optim.Optimizer,
             sched: torch.optim.lr_scheduler.LambdaLR, gen: torch.Generator,
             ) -> tuple[RecoveryRecord, FlipTracker, torch.Tensor, int, float]:
    """Put back a state ``_recover`` saved at an evaluation: ``(record, tracker, order, pos, lr)``.

    Raises:
        ResumeError: a state of other inputs, or one that does not fit the model.
    """
    blob, tracker, extra = restore(state, "recovery", config=serial.to_json(session.config), module=session.model,
                                   opt=opt, sched=sched, generator=gen)
    try:
        record = record_from_bytes(blob)
        order, pos, lr = state.tensor("extra/order"), int(extra["pos"]), float(extra["lr"])
    except Exception as err:
        raise ResumeError(f"unreadable resume state: {err}") from None
    if record.steps_done != state.step or record.status != "running" or not record.intervals \
            or record.intervals[-1].step != state.step or set(record.history.layers) != set(session.layers):
        raise ResumeError(f"the resume state is not at an evaluation of this run (step {state.step})")
    return record, tracker, order, pos, lr


def _recover(result: SparsifyResult, loaded: LoadedModel, config: RecoveryConfig, levels: dict[str, int],
             objective: Objective, loss_kind: str, notes: list[str], name: str, progress: ProgressFn | None,
             stop: StopFn | None, checkpoint: Callable[[RecoveryRecord], object] | None,
             resume_from: ResumeState | None = None,
             save_state: Callable[[ResumeState], object] | None = None) -> RecoveryRecord:
    session = _Session(result, loaded, config, levels)
    opt, sched = _optimizer(session.params, config)
    gen = torch.Generator().manual_seed(config.seed)
    order, pos, lr = torch.empty(0, dtype=torch.long), objective.n_examples, float("nan")
    masks = session.start
    if resume_from is not None:
        record, tracker, order, pos, lr = _restore(resume_from, session, opt, sched, gen)
        record.status, record.message, record.owner = "running", "", process_token()
        masks = session.masks() if config.moves_mask else session.start
    else:
        dense_quality = loaded.quality()
        metric = next(iter(dense_quality))
        record = RecoveryRecord(
            config=config, sparsify_config=result.config, model_spec=loaded.spec, model_name=loaded.name,
            loss_kind=loss_kind, metric=metric, higher_is_better=loaded.higher_is_better.get(metric, True),
            dense_quality=dense_quality, name=name, created=time.time(), notes=notes, owner=process_token(),
            history=MaskHistory({k: tuple(v.shape) for k, v in session.start.items()}),
        )
        record.history.record(0, 0.0, session.start)
        tracker = FlipTracker(session.start, run_window=True)
    start_time = time.perf_counter() - record.seconds  # a resumed run's clock goes on
    last = _SinceEval({k: v.clone() for k, v in masks.items()}, lr=lr)
    step = record.steps_done

    def evaluate(step: int, masks: dict[str, torch.Tensor], *, before: bool = False) -> RecoveryInterval:
        # Before training the score is the pruned model's own (the SparsifyResult as given).
        quality = loaded.quality(result.model if before else session.model)
        n = last.loss_n
        interval = RecoveryInterval(
            step=step, quality=quality, train_loss=last.loss_sum / n if n else float("nan"), lr=last.lr,
            seconds=time.perf_counter() - start_time,
            sad={k: sad(last.masks[k], masks[k]) for k in masks},
            sad_from_start={k: sad(session.start[k], masks[k]) for k in masks},
            flips=tracker.close(),
        )
        record.intervals.append(interval)
        last.masks, last.loss_sum, last.loss_n = {k: v.clone() for k, v in masks.items()}, 0.0, 0
        record.seconds = interval.seconds
        return interval

    def finish(status: str, message: str = "", masks: dict[str, torch.Tensor] | None = None) -> RecoveryRecord:
        record.status, record.message = status, message
        if masks is None:
            masks = session.masks()
        if record.history.steps[-1] != step:
            record.history.record(step, float(step), masks)
        record.run_flips = tracker.close_run()
        try:
            record.weights = session.forward_state()
        except Exception:  # a state the forward cannot rebuild: keep what is readable
            record.weights = {}
        record.seconds = time.perf_counter() - start_time
        if checkpoint is not None:
            checkpoint(record)
        return record

    def closing(masks: dict[str, torch.Tensor], *, keep: bool = False) -> None:
        """Evaluate at this step (once); ``keep``: also save the state and the record when steps are left,
        before the progress callback sees the evaluation."""
        if not record.intervals or record.intervals[-1].step != step:
            interval = evaluate(step, masks)
            if keep and step < config.steps:
                if save_state is not None:
                    save_state(capture("recovery", step, config=serial.to_json(config), module=session.model,
                                       opt=opt, sched=sched, generator=gen, tracker=tracker,
                                       record=record_to_bytes(record), names=_trained_names(session),
                                       extra={"pos": pos, "lr": last.lr}, extra_tensors={"order": order}))
                if checkpoint is not None:
                    checkpoint(record)
            if progress is not None:
                progress(RecoveryProgress("eval", step, config.steps, record.step_loss[-1], interval, masks, record,
                                          session.model))

    try:
        first = evaluate(0, session.start, before=True) if resume_from is None else record.intervals[-1]
        if checkpoint is not None:
            checkpoint(record)
        if progress is not None:
            progress(RecoveryProgress("start", step, config.steps, float("nan"), first, masks, record, session.model))
        while step < config.steps:
            if stop is not None and stop():
                closing(masks)
                return finish("stopped", f"stopped at step {step} of {config.steps}", masks)
            if pos >= objective.n_examples:
                order, pos = torch.randperm(objective.n_examples, generator=gen), 0
            idx = order[pos: pos + config.batch_size]
            pos += config.batch_size
            loss = objective.loss(session.model, objective.batch(idx))
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                record.step_loss.append(loss_value)
                return finish("failed", f"the training loss became {loss_value} at step {step + 1}; "
                                        f"lower the learning rate (now {config.lr:g})", masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            last.lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            step += 1
            record.steps_done = step
            if config.moves_mask:
                try:
                    masks = session.refresh()
                except ValueError:  # NaN/inf shadow weights cannot be ranked into a mask
                    return finish("failed", f"the weights became NaN or infinite at step {step}; "
                                            f"lower the learning rate (now {config.lr:g})", last.masks)
                changed = tracker.update(masks)
            else:
                changed = tracker.tick()  # a frozen mask: nothing changes, nothing to compare
            record.step_loss.append(loss_value)
            record.step_flip_rate.append(tracker.step_rate(changed))
            last.loss_sum += loss_value
            last.loss_n += 1
            if progress is not None:
                progress(RecoveryProgress("step", step, config.steps, loss_value, None, masks, record, session.model))
            if step % config.eval_every == 0 or step == config.steps:
                closing(masks, keep=True)
        return finish("complete", "", masks)
    except Exception as err:
        if record.status == "running":
            finish("failed", f"{type(err).__name__} at step {step}: {err}", None)
        raise
    except BaseException:
        # KeyboardInterrupt, or Streamlit stopping the script for a rerun.
        if record.status == "running":
            finish("stopped", f"interrupted at step {step} of {config.steps}", None)
        raise
