"""Training runs in the run store (``sparsekit.store.RunStore``, the one recovery and benchmark runs
use): one safetensors entry per run plus the index.

The keys are those of earlier versions (``training-run:<hash of the id>``, ``training-run-index:v1``),
so runs saved before still load.
"""
from __future__ import annotations

from ..store import RunStore
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


def save_run(record: RunRecord) -> str:
    """Write a run to the disk cache (its entry first, then the index), giving it an id if new.

    Args:
        record: the run; ``record.run_id`` is set when empty.

    Returns:
        The run id.
    """
    return STORE.save(record)


def load_run(run_id: str) -> RunRecord:
    """A saved run, exactly as saved.

    Args:
        run_id: the id ``save_run`` returned.

    Returns:
        The ``RunRecord``.

    Raises:
        KeyError: no such run. ValueError: the entry is not readable.
    """
    return STORE.load(run_id)


def list_runs() -> list[dict]:
    """Summaries of the saved runs, oldest first (``RunRecord.summary`` dicts).

    Returns:
        One dict per run whose entry still exists.
    """
    return STORE.runs(oldest_first=True)


def rename_run(run_id: str, name: str) -> RunRecord:
    """Give a saved run a new name.

    Args:
        run_id: the run.
        name: the new name, at most 80 characters (empty: back to the config's label).

    Returns:
        The renamed run.
    """
    return STORE.rename(run_id, name)


def delete_run(run_id: str) -> None:
    """Remove a saved run (index first, so no listed run ever lacks its entry).

    Args:
        run_id: the run; an unknown id raises ``KeyError``.
    """
    if not STORE.delete(run_id):
        raise KeyError(f"no saved training run with id {run_id!r}")
