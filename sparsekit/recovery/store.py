"""Recovery runs in the run store (``sparsekit.store.RunStore``, the one training and benchmark runs
use): one safetensors entry per run plus an index of summaries; and the recovered weights as
safetensors bytes for download."""
from __future__ import annotations

import json
from functools import partial
from typing import Callable, Sequence

from safetensors.torch import save as save_tensors

from ..models.base import LoadedModel
from ..sparsify import SparsifyResult
from ..store import RunStore
from .config import RecoveryConfig
from .loop import ProgressFn, StopFn, recover
from .objectives import Objective
from .records import RecoveryRecord, record_from_bytes, record_to_bytes, summary_from_bytes

INDEX_KEY = "recovery-run-index:v1"

__all__ = ["INDEX_KEY", "STORE", "delete_recovery", "list_recoveries", "load_recovery", "recover_and_save",
           "recovered_safetensors", "save_recovery"]


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
) -> RecoveryRecord:
    """``recover`` with the run kept in the run store from its first evaluation: saved at the start,
    after every evaluation and at the end, also when it is stopped or raises.

    Args:
        result, loaded, config, corpus, name, progress, stop, objective: as for ``recover`` (``progress``
            True, the default, draws a bar of the steps done; False/None is silent).
        checkpoint: also called after each save (e.g. to refresh a page).

    Returns:
        The saved ``RecoveryRecord`` (with its ``run_id``).
    """
    def save(record: RecoveryRecord) -> None:
        save_recovery(record)
        if checkpoint is not None:
            checkpoint(record)

    return recover(result, loaded, config, corpus=corpus, name=name, progress=progress, stop=stop, checkpoint=save,
                   objective=objective)


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
