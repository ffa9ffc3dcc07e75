"""Training runs in the run store (``sparsekit.store.RunStore``, the one recovery and benchmark runs
use): one safetensors entry per run plus the index; and the resume state of a run stopped half-way.

The keys are those of earlier versions (``training-run:<hash of the id>``, ``training-run-index:v1``),
so runs saved before still load.
"""
from __future__ import annotations

from functools import partial

from .. import serial
from ..cache import tensor_digest
from ..models.digits import DigitsData, digits_split
from ..resume import ResumeState, clear_state, load_state, save_state, state_key, tensor_bytes
from ..store import RunStore
from .config import TrainConfig
from .records import RunRecord, run_from_bytes, run_to_bytes

_INDEX_KEY = "training-run-index:v1"


def _orphan_message(steps_note: str) -> str:
    return ("the process training this run ended without saving a final status (server stopped or crashed); "
            f"kept as of its last checkpoint{steps_note}")


STORE: RunStore[RunRecord] = RunStore(
    "training-run", what="training run", index_key=_INDEX_KEY, to_bytes=run_to_bytes, from_bytes=run_from_bytes,
    orphan_record=lambda r: _orphan_message(f" (step {r.steps_done:,} of {r.total_steps:,})"),
    orphan_summary=lambda e: _orphan_message(f" (epoch {e.get('epochs_done') or 0.0:g})"),
)
"""The training runs' store."""
_run_key = STORE.key


# The store's operations under the training names (``RunStore`` documents each): ``save_run(record)`` gives a
# new run its id; ``load_run`` and ``rename_run`` raise ``KeyError`` for an unknown id, ``ValueError`` for an
# unreadable entry; ``list_runs()`` lists the summaries oldest first; ``delete_run`` raises ``KeyError`` for an
# unknown id.
save_run = STORE.save
load_run = STORE.load
list_runs = partial(STORE.runs, oldest_first=True)
rename_run = STORE.rename
delete_run = STORE.remove


# ---------------------------------------------------------------------------------------------
# Resume states: the last epoch's checkpoint of a run stopped half-way (``sparsekit.resume``)

RESUME_KIND = "training"


def resume_key(config: TrainConfig, data: DigitsData, *, owner: str = "training-run") -> str:
    """The cache key of the resume state of a run of ``config`` on ``data`` (config JSON + data digest);
    ``owner`` keeps apart states of runs in the run store and of study cells, which are not stored there."""
    digest = tensor_digest(data.x_train, data.y_train, data.x_test, data.y_test)
    return state_key(owner, serial.to_json(config), digest)


def resumable_run(config: TrainConfig, data: DigitsData | None = None) -> RunRecord | None:
    """The saved run that ``run_and_save(config, data=data)`` would continue, or None.

    That is the run of the resume state kept for this config and data, when the run is still in the
    store and stopped (Stop, Ctrl-C, an exception, or its process gone while it ran); a run that is
    running in a live process, finished, or deleted is not continued. The record returned is the run
    as stored (the partial run, as far as it got).
    """
    state = load_state(resume_key(config, data if data is not None else digits_split()), RESUME_KIND)
    return None if state is None else _stored_run(state)


def _stored_run(state: ResumeState) -> RunRecord | None:
    try:
        run_id = run_from_bytes(tensor_bytes(state.tensor("record"))).run_id
        stored = load_run(run_id) if run_id else None
    except (KeyError, ValueError):
        return None
    return stored if stored is not None and stored.status in ("stopped", "failed") else None


def load_resume_state(key: str) -> tuple[ResumeState, RunRecord] | None:
    """The resume state at ``key`` with the stored run it continues, when that run may be continued
    (see ``resumable_run``); None otherwise (no state, an unreadable one, another version)."""
    state = load_state(key, RESUME_KIND)
    if state is None:
        return None
    stored = _stored_run(state)
    return None if stored is None else (state, stored)


def load_cell_state(key: str) -> ResumeState | None:
    """A study cell's resume state at ``key`` (no stored run behind it), or None."""
    return load_state(key, RESUME_KIND)


def save_resume_state(key: str, state: ResumeState) -> None:
    """Keep a run's latest checkpoint (replacing the one before)."""
    save_state(key, state)


clear_resume_state = clear_state
"""Drop a run's resume state (it completed, or a fresh run replaces it)."""
