"""Recovery runs in the run store (``sparsekit.store.RunStore``, the one training and benchmark runs
use): one safetensors entry per run plus an index of summaries; and the recovered weights as
safetensors bytes for download."""
from __future__ import annotations

import copy
import json
from functools import partial
from typing import Callable, Sequence

from safetensors.torch import save as save_tensors
from torch import nn

from .. import serial
from ..cache import model_fingerprint, tensor_digest
from ..models.base import LoadedModel
from ..resume import ResumeError, ResumeState, clear_state, load_state, save_state, state_key, tensor_bytes
from ..sparsify import SparsifyResult
from ..store import RunStore
from .config import RecoveryConfig
from .loop import ProgressFn, StopFn, recover
from .objectives import Objective, clean_corpus
from .records import RecoveryRecord, record_from_bytes, record_to_bytes, summary_from_bytes

INDEX_KEY = "recovery-run-index:v1"
RESUME_KIND = "recovery"

__all__ = ["INDEX_KEY", "STORE", "delete_recovery", "list_recoveries", "load_recovery", "recover_and_save",
           "recovered_model", "recovered_safetensors", "resumable_recovery", "resume_key",
           "save_recovery"]


def _orphan_message(steps: int, total: int) -> str:
    return ("the process running this recovery ended without saving a final status (server stopped or "
            f"crashed); kept as of its last checkpoint (step {steps:,} of {total:,})")


STORE: RunStore[RecoveryRecord] = RunStore(
    "recovery-run", what="recovery run", index_key=INDEX_KEY, to_bytes=record_to_bytes,
    from_bytes=record_from_bytes, summarize=summary_from_bytes,
    orphan_record=lambda r: _orphan_message(r.steps_done, r.config.steps),
    orphan_summary=lambda e: _orphan_message(int(e.get("steps_done") or 0),
                                             int((e.get("config") or {}).get("steps") or 0)),
)
"""The recovery runs' store."""


# The store's operations under the recovery names (``RunStore`` documents each): ``save_recovery(record)``
# gives a new run its id; ``load_recovery`` raises ``KeyError`` for an unknown id, ``ValueError`` for an
# unreadable entry; ``list_recoveries()`` lists the summaries oldest first; ``delete_recovery`` raises
# ``KeyError`` for an unknown id.
save_recovery = STORE.save
load_recovery = STORE.load
list_recoveries = partial(STORE.runs, oldest_first=True)
delete_recovery = STORE.remove


def resume_key(result: SparsifyResult, loaded: LoadedModel, config: RecoveryConfig,
               corpus: Sequence[str] | None = None) -> str:
    """The cache key of the resume state of a recovery of ``result`` (its pruned weights and masks, its
    config) from ``loaded`` (spec and weights) with ``config`` on ``corpus`` (text models)."""
    masks = sorted(result.masks)
    text = None if loaded.kind == "image-classifier" else "\n".join(clean_corpus(corpus))
    return state_key("recovery-run", loaded.spec, model_fingerprint(loaded.module), model_fingerprint(result.model),
                     masks, tensor_digest(*(result.masks[k] for k in masks)), json.loads(result.config.to_json()),
                     serial.to_json(config), text)


def _resumable(key: str) -> tuple[ResumeState, RecoveryRecord] | None:
    state = load_state(key, RESUME_KIND)
    if state is None:
        return None
    try:
        run_id = summary_from_bytes(tensor_bytes(state.tensor("record")))["run_id"]
        stored = load_recovery(run_id) if run_id else None
    except (KeyError, ValueError):
        return None
    return (state, stored) if stored is not None and stored.status in ("stopped", "failed") else None


def resumable_recovery(result: SparsifyResult, loaded: LoadedModel, config: RecoveryConfig,
                       corpus: Sequence[str] | None = None) -> RecoveryRecord | None:
    """The saved run that ``recover_and_save`` with the same inputs would continue (as stored), or None.

    That is the run of the resume state kept for these inputs when it is still in the store and stopped
    (the stop function, Ctrl-C, an exception, or its process gone); a run that is running in a live
    process, finished, or deleted is not continued.
    """
    found = _resumable(resume_key(result, loaded, config, corpus))
    return None if found is None else found[1]


def recover_and_save(
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
    resume: bool = True,
) -> RecoveryRecord:
    """``recover`` with the run kept in the run store from its first evaluation: saved at the start,
    after every evaluation and at the end, also when it is stopped or raises.

    A run stopped half-way (``stop``, Ctrl-C, an exception, the app's Stop button, or its process gone)
    is continued by the same call: after every evaluation but the last, the run's state (trained weights
    and masks, optimiser, schedule, batch order, random state, flip counters, the record so far) is kept
    in the disk cache under the inputs (the pruned result's weights and masks and its config, the dense
    model, the recovery config, the corpus; ``sparsekit.resume``), and a call that finds the state of a
    stopped run continues that run (same ``run_id``, status back to ``running``) from its last
    evaluation, training only the steps left. The result equals an uninterrupted run's (weights, metrics,
    masks, step losses, flip rates; only wall times differ). The state is dropped when the run completes
    or fails on a non-finite loss; one that cannot be read is ignored. It costs one entry the size of the
    trained weights, their optimiser state and the masks.

    Args:
        result, loaded, config, corpus, name, progress, stop, objective: as for ``recover`` (``progress``
            True, the default, draws a bar of the steps done; False/None is silent).
        checkpoint: also called after each save (e.g. to refresh a page).
        resume: False starts afresh (a new run) even when a stopped run of these inputs could be continued.

    Returns:
        The saved ``RecoveryRecord`` (with its ``run_id``).
    """
    key = resume_key(result, loaded, config, corpus)
    found = _resumable(key) if resume else None
    if not resume:
        clear_state(key)
    stored_name = [found[1].name] if found is not None else []

    def save(record: RecoveryRecord) -> None:
        if stored_name:  # a continued run keeps a name given in the store since it stopped
            record.name = stored_name.pop()
        save_recovery(record)
        if checkpoint is not None:
            checkpoint(record)

    def keep(state: ResumeState) -> None:
        save_state(key, state)

    def run(state: ResumeState | None) -> RecoveryRecord:
        return recover(result, loaded, config, corpus=corpus, name=name, progress=progress, stop=stop,
                       checkpoint=save, objective=objective, resume_from=state, save_state=keep)

    try:
        record = run(found[0] if found is not None else None)
    except ResumeError:  # a state that does not fit (checked before anything ran): start afresh
        stored_name.clear()
        record = run(None)
    if record.status != "stopped":
        clear_state(key)
    return record


def recovered_safetensors(record: RecoveryRecord, metadata: dict[str, str] | None = None) -> bytes:
    """The recovered model's state dict as safetensors bytes (like ``sparsekit.sparsify.weights_safetensors``).

    Args:
        record: a recovery run with weights.
        metadata: extra string metadata.

    Returns:
        Bytes that ``safetensors.torch.load`` reads into a state dict of the dense architecture;
        the metadata records the pruning and recovery configs and the quality before and after.
    """
    if not record.weights:
        raise ValueError(f"run {record.label!r} has no saved weights (status {record.status})")
    state = {k: v.detach().contiguous().clone() for k, v in record.weights.items()}
    meta = {
        "sparsify_config": record.sparsify_config.to_json(), "recovery_config": record.config.to_json(),
        "model_spec": record.model_spec, "metric": record.metric,
        "quality": json.dumps({"dense": record.dense, "before": record.before, "after": record.after}),
        "convention": "pruned weights are stored as zeros",
    }
    meta.update(metadata or {})
    return save_tensors(state, metadata=meta)


def recovered_model(record: RecoveryRecord, loaded: LoadedModel) -> nn.Module:
    """A fresh copy of the dense architecture holding the recovered weights (eval mode).

    Args:
        record: a recovery run with weights.
        loaded: the dense model it was recovered from (only its architecture is used).

    Returns:
        The module; ``loaded.module`` is not touched.
    """
    if not record.weights:
        raise ValueError(f"run {record.label!r} has no saved weights (status {record.status})")
    if record.model_spec != loaded.spec:
        raise ValueError(f"run {record.label!r} was recovered from {record.model_spec!r}, not {loaded.spec!r}")
    module = copy.deepcopy(loaded.module)
    module.load_state_dict(record.weights, strict=True)
    return module.eval()
