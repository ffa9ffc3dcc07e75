"""Training runs in the run store (``sparsekit.store``): one safetensors entry per run plus the index.

The keys are those of earlier versions (``training-run:<hash of the id>``, ``training-run-index:v1``),
so runs saved before still load.
"""
from __future__ import annotations


from ..store import RunStore, orphaned
from .records import RunRecord, run_from_bytes, run_to_bytes

_INDEX_KEY = "training-run-index:v1"
_STORE = RunStore("training-run", index_key=_INDEX_KEY, summarize=lambda blob: run_from_bytes(blob).summary())


def _run_key(run_id: str) -> str:
    return _STORE.key(run_id)


def _orphan_message(steps_note: str) -> str:
    return ("the process training this run ended without saving a final status (server stopped or crashed); "
            f"kept as of its last checkpoint{steps_note}")


def _settle_orphan_entry(entry: dict) -> dict:
    if orphaned(entry.get("status", ""), entry.get("owner", "")):
        done = entry.get("epochs_done") or 0.0
        return {**entry, "status": "stopped", "message": _orphan_message(f" (epoch {done:g})")}
    return entry


def save_run(record: RunRecord) -> str:
    """Write a run to the disk cache (its entry first, then the index), giving it an id if new.

    Args:
        record: the run; ``record.run_id`` is set when empty.

    Returns:
        The run id.
    """
    return _STORE.save_record(record, run_to_bytes)


def load_run(run_id: str) -> RunRecord:
    """A saved run, exactly as saved.

    Args:
        run_id: the id ``save_run`` returned.

    Returns:
        The ``RunRecord``.

    Raises:
        KeyError: no such run. ValueError: the entry is not readable.
    """
    record = _STORE.load_record(run_id, run_from_bytes, "training run")
    if orphaned(record.status, record.owner):
        record.status = "stopped"
        record.message = _orphan_message(f" (step {record.steps_done:,} of {record.total_steps:,})")
    return record


def list_runs() -> list[dict]:
    """Summaries of the saved runs, oldest first (``RunRecord.summary`` dicts).

    Returns:
        One dict per run whose entry still exists.
    """
    return [_settle_orphan_entry(e) for e in _STORE.summaries()]


def rename_run(run_id: str, name: str) -> RunRecord:
    """Give a saved run a new name.

    Args:
        run_id: the run.
        name: the new name, at most 80 characters (empty: back to the config's label).

    Returns:
        The renamed run.
    """
    name = name.strip()
    if len(name) > 80:
        raise ValueError(f"a run name has at most 80 characters, got {len(name)}")
    record = load_run(run_id)
    record.name = name
    save_run(record)
    return record


def delete_run(run_id: str) -> None:
    """Remove a saved run (index first, so no listed run ever lacks its entry).

    Args:
        run_id: the run; an unknown id raises ``KeyError``.
    """
    if not _STORE.delete(run_id):
        raise KeyError(f"no saved training run with id {run_id!r}")
