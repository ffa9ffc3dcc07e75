"""Training runs in the run store (``sparsekit.store.RunStore``, the one recovery and benchmark runs
use): one safetensors entry per run plus the index.

The keys are those of earlier versions (``training-run:<hash of the id>``, ``training-run-index:v1``),
so runs saved before still load.
"""
from __future__ import annotations

from functools import partial

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


# The store's operations under the training names (``RunStore`` documents each): ``save_run(record)`` gives a
# new run its id; ``load_run`` and ``rename_run`` raise ``KeyError`` for an unknown id, ``ValueError`` for an
# unreadable entry; ``list_runs()`` lists the summaries oldest first; ``delete_run`` raises ``KeyError`` for an
# unknown id.
save_run = STORE.save
load_run = STORE.load
list_runs = partial(STORE.runs, oldest_first=True)
rename_run = STORE.rename
delete_run = STORE.remove
